"""Optional LLM judge over an OpenAI-compatible chat endpoint (e.g. a local vLLM server).

Off by default; used only where the official scorers use one: replies no rule can read
(TempCompass), TempCompass captioning, MMVU open-ended. Every answer is cached on disk keyed
by (model, messages), so re-scoring costs nothing and gives the same verdicts. The API key
is read from an environment variable at request time and is never written to the cache,
results, logs or error messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stormvl.data.manifest import JsonlAppender, read_jsonl_tolerant
from stormvl.errors import UserError


@dataclass
class JudgeConfig:
    base_url: str  # e.g. http://localhost:8000/v1 (the path before /chat/completions)
    model: str = "gpt-4o-mini"  # model name the server knows
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (may be unset)
    cache_path: str = "stormvl_judge_cache.jsonl"  # JSONL cache of judge answers
    timeout_s: float = 60.0  # per request
    retries: int = 3  # attempts per request before giving up


_BINARY_SYSTEM = "You grade answers to video questions. Reply with one word."
_BINARY_USER = (
    "Question:\n{question}\n\nGround-truth answer: {answer}\nModel prediction: {prediction}\n\n"
    "Does the prediction give the same answer as the ground truth? Reply 'Correct' if it "
    "does and 'Incorrect' otherwise."
)
_CAPTION_SYSTEM = "You answer multiple-choice questions using only a video description."
_CAPTION_USER = (
    "Video description: {caption}\n\nMulti-choice question:\n{question}\n\n"
    "Using only the description, pick the correct option. If the description does not "
    "support any option, say 'None of the choices are correct'. End with one line of the "
    "form 'Answer: <letter>. <option text>'."
)


class Judge:
    """Cached binary / captioning judgements from one model."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.calls = 0  # requests actually sent (cache misses)
        path = Path(cfg.cache_path)
        self._cache = {r["key"]: r["output"] for r in read_jsonl_tolerant(path)
                       if isinstance(r, dict) and "key" in r and "output" in r}
        self._log = JsonlAppender(path)

    def binary(self, question: str, answer: str, prediction: str) -> bool:
        """True when the judge calls the prediction correct."""
        out = self.ask(_BINARY_SYSTEM, _BINARY_USER.format(
            question=question, answer=answer, prediction=prediction))
        return rating(out)

    def caption_choice(self, caption: str, mc_question: str) -> str:
        """The option the judge picks from the caption, e.g. "B. sleeping" ("" if none)."""
        out = self.ask(_CAPTION_SYSTEM, _CAPTION_USER.format(caption=caption,
                                                             question=mc_question))
        for line in reversed(out.splitlines()):
            if "Answer" in line:
                return line.split("Answer:", 1)[-1].strip()
        return out.strip()

    def ask(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        key = hashlib.sha256(json.dumps([self.cfg.model, messages]).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        out = self._post(messages)
        self._cache[key] = out
        self._log.write({"key": key, "model": self.cfg.model, "output": out})
        return out

    def _post(self, messages: list[dict]) -> str:
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": self.cfg.model, "messages": messages, "temperature": 0,
                           "max_tokens": 128}).encode()
        secret = os.environ.get(self.cfg.api_key_env, "")
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        problem = ""
        for attempt in range(max(1, self.cfg.retries)):
            self.calls += 1
            try:
                req = urllib.request.Request(url, body, headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return str(data["choices"][0]["message"]["content"]).strip()
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code in (400, 401, 403, 404):
                    break  # retrying cannot fix these
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                problem = type(exc).__name__ + ": " + str(getattr(exc, "reason", exc))
            except (ValueError, KeyError, IndexError, TypeError):
                problem = "malformed response (no choices[0].message.content)"
            time.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise UserError(_redact(f"judge request to {url} failed: {problem} "
                                f"(key from ${self.cfg.api_key_env})", secret))

    def close(self) -> None:
        self._log.close()


def rating(output: str) -> bool:
    """Read a Correct / Incorrect verdict the way TempCompass does (unclear = incorrect)."""
    text = output.strip()
    if text.startswith("Correct"):
        return True
    if text.startswith("Incorrect"):
        return False
    return "Correct" in text and "Incorrect" not in text


def _redact(message: str, secret: str) -> str:
    return message.replace(secret, "***") if secret else message

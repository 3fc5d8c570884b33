"""LLM judge against a local OpenAI-compatible stub: cache, key handling, failures, CLI."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fixtures_tasks import write_predictions, write_tempcompass
from stormvl.cli import main
from stormvl.errors import UserError
from stormvl.tasks.judge import Judge, JudgeConfig, rating

SECRET = "sk-test-SECRET-4242"


class Stub:
    """A tiny chat-completions server; ``status`` forces an error code."""

    def __init__(self):
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.status = 200
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                stub.auth.append(self.headers.get("Authorization"))
                if stub.status != 200:
                    self.send_response(stub.status)
                    self.end_headers()
                    self.wfile.write(f"bad key {SECRET}".encode())
                    return
                user = body["messages"][-1]["content"]
                if "Video description" in user:
                    text = "Reasoning: it sleeps.\nAnswer: B. sleeping"
                else:
                    text = "Correct" if "prediction: The answer is A" in user else "Incorrect"
                out = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stub(monkeypatch):
    s = Stub()
    monkeypatch.setenv("STORMVL_TEST_JUDGE_KEY", SECRET)
    yield s
    s.server.shutdown()


def _judge(stub, tmp_path, **kw):
    return Judge(JudgeConfig(stub.url, "m", "STORMVL_TEST_JUDGE_KEY",
                             str(tmp_path / "cache.jsonl"), timeout_s=5, retries=1, **kw))


def test_rating_rule():
    assert rating("Correct.") and not rating("Incorrect") and not rating("maybe")
    assert rating("The prediction is Correct") and not rating("It is Incorrect, not Correct")


def test_binary_cached_and_key_sent_not_stored(stub, tmp_path):
    j = _judge(stub, tmp_path)
    assert j.binary("q", "A", "The answer is A") is True
    assert j.binary("q", "A", "The answer is A") is True  # cache hit
    assert j.binary("q", "A", "nope") is False
    j.close()
    assert len(stub.requests) == 2 and stub.auth == [f"Bearer {SECRET}"] * 2
    assert stub.requests[0]["temperature"] == 0 and stub.requests[0]["model"] == "m"
    cache = (tmp_path / "cache.jsonl").read_text()
    assert SECRET not in cache and len(cache.splitlines()) == 2
    j2 = _judge(stub, tmp_path)  # a new run re-uses the cache: no request
    assert j2.binary("q", "A", "The answer is A") is True and j2.calls == 0
    j2.close()


def test_caption_choice(stub, tmp_path):
    j = _judge(stub, tmp_path)
    assert j.caption_choice("a cat sleeps", "What?\nA. x\nB. sleeping") == "B. sleeping"
    j.close()


def test_failure_is_clear_and_redacted(stub, tmp_path):
    stub.status = 500
    j = _judge(stub, tmp_path)
    with pytest.raises(UserError) as err:
        j.binary("q", "A", "x")
    msg = str(err.value)
    assert "HTTP 500" in msg and "$STORMVL_TEST_JUDGE_KEY" in msg and SECRET not in msg
    j.close()


def test_unreachable_server(tmp_path):
    j = Judge(JudgeConfig("http://127.0.0.1:9/v1", "m", "NO_SUCH_VAR",
                          str(tmp_path / "c.jsonl"), timeout_s=2, retries=1))
    with pytest.raises(UserError, match="judge request to http://127.0.0.1:9/v1/chat/completions"):
        j.binary("q", "a", "b")
    j.close()


def test_cli_with_judge_keeps_key_out_of_results(stub, tmp_path, capsys):
    data = write_tempcompass(tmp_path / "tc", videos=False)
    preds = write_predictions(tmp_path / "p.jsonl", [
        ("multi-choice/0", "B"), ("multi-choice/1", "The answer is A"),
        ("multi-choice/2", "eating, I think"), ("captioning/0", "a cat sleeps")])
    out = tmp_path / "results.json"
    code = main(["score", "--benchmark", "tempcompass", "--data", str(data), "--predictions",
                 str(preds), "--out", str(out), "--judge-url", stub.url,
                 "--judge-key-env", "STORMVL_TEST_JUDGE_KEY"])
    text = capsys.readouterr().out
    assert code == 0
    res = json.loads(out.read_text())
    # mc/1 judged correct, mc/2 judged incorrect, captioning judged B = gold: 3 of 8 right
    assert res["judged"] == 3 and res["n_correct"] == 3 and res["n_scored"] == 8
    cache = out.with_suffix(".judge_cache.jsonl")
    assert cache.exists()
    for blob in (out.read_text(), text, cache.read_text()):
        assert SECRET not in blob

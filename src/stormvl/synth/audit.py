"""Anti-shortcut audit: cheap baselines fitted on the train split, scored on test, per family.

If a baseline that cannot reason beats chance, the family leaks its answer. Baselines:

- ``prior``: always the most frequent train answer letter.
- ``text``: question + options, no video. Each option is scored by a logistic regression on
  hashed features of [its letter, its words, (question word, option word) pairs]; the
  highest-scoring option is the prediction.
- ``first`` / ``last``: one frame. A bilinear logistic regression scores each option from
  (PCA of the 8x8 downsampled frame) x [its letter, its hashed words], so it can exploit a
  letter or an option text that correlates with pixels.
- ``shuffled``: all frames in a random order (4x4 each), same bilinear model: what the
  frames say without their order. Reported, not gated (counting legitimately works here).

Acceptance: prior and text within chance + 5 points, first and last within
chance + 10 points, per family.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import zlib
from pathlib import Path

import numpy as np

from stormvl.data.manifest import LETTERS, Sample, read_manifest, resolve_media
from stormvl.data.video import decode_frames
from stormvl.errors import UserError

BASELINES = ("prior", "text", "first", "last", "shuffled")
GATES = {"prior": 5.0, "text": 5.0, "first": 10.0, "last": 10.0}  # points above chance
TEXT_DIM, OPT_DIM, PCA_DIM = 2**12, 64, 24


def _tokens(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() else " " for c in text).split()


def _hash(tok: str, dim: int) -> int:
    return zlib.crc32(tok.encode()) % dim


def _option_words(opt: str, dim: int) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    toks = _tokens(opt)
    for t in toks + [a + "_" + b for a, b in zip(toks, toks[1:], strict=False)]:
        v[_hash(t, dim)] = 1.0
    return v


def _pool(frames: np.ndarray, g: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, g, g, 3) float32 block means in [0, 1]."""
    t, h, w, _ = frames.shape
    f = frames[:, : h - h % g, : w - w % g].astype(np.float32) / 255.0
    return f.reshape(t, g, (h - h % g) // g, g, (w - w % g) // g, 3).mean((2, 4))


def _video_features(job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-frame, last-frame and shuffled-frames pixel vectors of one video."""
    path, sid = job
    frames, _ = decode_frames(path)
    small = _pool(frames, 8)
    tiny = _pool(frames, 4)
    perm = np.random.default_rng(zlib.crc32(sid.encode())).permutation(len(frames))
    return small[0].ravel(), small[-1].ravel(), tiny[perm].ravel()


def _text_rows(s: Sample):
    """(n_options, TEXT_DIM) sparse hashed features of each option against the question."""
    from scipy.sparse import csr_matrix

    q = sorted(set(_tokens(s.question)))
    rows, cols = [], []
    for j, opt in enumerate(s.options):
        keys = {f"letter={LETTERS[j]}"}
        for t in set(_tokens(opt)):
            keys.add("o=" + t)
            keys.update(f"q={w}|o={t}" for w in q)
        idx = sorted({_hash(k, TEXT_DIM) for k in keys})
        rows += [j] * len(idx)
        cols += idx
    data = np.ones(len(rows), np.float32)
    return csr_matrix((data, (rows, cols)), shape=(len(s.options), TEXT_DIM))


def _option_code(s: Sample) -> np.ndarray:
    """(n_options, 4 + OPT_DIM): letter one-hot and hashed words of each option."""
    k = len(s.options)
    return np.concatenate([np.eye(k, 4, dtype=np.float32), np.stack([_option_words(o, OPT_DIM) for o in s.options])], 1)


def _fit_choice(x_tr: list[np.ndarray], y_tr: list[int], x_te: list[np.ndarray], y_te: list[int]) -> float:
    """Per-option binary logistic regression; C picked on a held-out fifth of train.

    x_*: list over samples of (n_options, D) features. Returns test accuracy in percent.
    """
    from scipy.sparse import issparse, vstack
    from sklearn.linear_model import LogisticRegression

    def stack(xs, ys):
        x = vstack(xs).tocsr() if issparse(xs[0]) else np.concatenate(xs)
        y = np.concatenate([np.eye(a.shape[0])[yy] for a, yy in zip(xs, ys, strict=True)])
        return x, y

    def acc(model, xs, ys):
        hits = [int(np.argmax(model.decision_function(a))) == yy for a, yy in zip(xs, ys, strict=True)]
        return 100.0 * float(np.mean(hits))

    cut = max(1, len(x_tr) * 4 // 5)
    best_c, best = 1.0, -1.0
    for c in (0.01, 0.1, 1.0):
        m = LogisticRegression(C=c, max_iter=300).fit(*stack(x_tr[:cut], y_tr[:cut]))
        a = acc(m, x_tr[cut:], y_tr[cut:]) if cut < len(x_tr) else 0.0
        if a > best:
            best_c, best = c, a
    model = LogisticRegression(C=best_c, max_iter=300).fit(*stack(x_tr, y_tr))
    return acc(model, x_te, y_te)


def _pixel_baseline(px_tr, px_te, code_tr, code_te, y_tr, y_te, seed: int) -> float:
    """Bilinear option scorer: (1 + PCA(pixels)) x option code."""
    from sklearn.decomposition import PCA

    dim = min(PCA_DIM, len(px_tr) - 1, px_tr.shape[1])
    pca = PCA(dim, whiten=True, random_state=seed).fit(px_tr)

    def feats(px, codes):
        z = np.concatenate([np.ones((len(px), 1), np.float32), pca.transform(px).astype(np.float32)], 1)
        return [np.einsum("p,oc->opc", zi, c).reshape(len(c), -1) for zi, c in zip(z, codes, strict=True)]

    return _fit_choice(feats(px_tr, code_tr), y_tr, feats(px_te, code_te), y_te)


def audit_family(train: list[Sample], test: list[Sample], pixels: dict[str, tuple]) -> dict:
    """All baselines for one family. ``pixels`` maps sample id -> (first, last, shuffled)."""
    y_tr = [s.answer_index for s in train]
    y_te = [s.answer_index for s in test]
    n_opt = len(test[0].options)
    chance = 100.0 / n_opt
    counts = np.bincount(y_tr, minlength=n_opt)
    out = {"n_train": len(train), "n_test": len(test), "chance": round(chance, 2)}
    out["prior"] = 100.0 * float(np.mean(np.array(y_te) == int(np.argmax(counts))))
    out["text"] = _fit_choice([_text_rows(s) for s in train], y_tr, [_text_rows(s) for s in test], y_te)
    code_tr = [_option_code(s) for s in train]
    code_te = [_option_code(s) for s in test]
    for k, name in enumerate(("first", "last", "shuffled")):
        px_tr = np.stack([pixels[s.id][k] for s in train])
        px_te = np.stack([pixels[s.id][k] for s in test])
        out[name] = _pixel_baseline(px_tr, px_te, code_tr, code_te, y_tr, y_te, seed=k)
    for b in BASELINES:
        out[b] = round(out[b], 2)
    letters = np.bincount(y_te, minlength=n_opt) / max(1, len(y_te))
    out["test_letter_share"] = [round(100 * float(v), 2) for v in letters]
    return out


def _collect(root: Path) -> list[tuple[Path, Sample]]:
    manifests = [root / "manifest.jsonl"] if (root / "manifest.jsonl").is_file() else []
    manifests += sorted(root.glob("*/manifest.jsonl"))
    if not manifests:
        raise UserError(f"{root}: no manifest.jsonl here or in a sub-folder")
    return [(m.parent, s) for m in manifests for s in read_manifest(m)]


def run_audit(directory, out=None, workers: int = 1, gates: dict[str, float] | None = None):
    """Audit every family found in ``directory`` (its manifest and its sub-folders' manifests).

    Returns:
        (result dict, path of the JSON written)

    Raises:
        UserError: no manifest, or no train / test items for the families found.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    gates = {**GATES, **(gates or {})}
    items = _collect(root)
    by_fam: dict[str, dict[str, list]] = {}
    for base, s in items:
        by_fam.setdefault(s.family or "?", {}).setdefault(s.split or "?", []).append((base, s))
    fams = sorted(f for f, d in by_fam.items() if d.get("train") and d.get("test"))
    if not fams:
        raise UserError(f"{root}: need items of both the train and the test split (found splits "
                        f"{sorted({s.split for _, s in items})})")
    jobs = [(str(resolve_media(b, s.video)), s.id) for f in fams for sp in ("train", "test") for b, s in by_fam[f][sp]]
    if workers > 1:
        with mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers) as pool:
            feats = pool.map(_video_features, jobs, chunksize=16)
    else:
        feats = [_video_features(j) for j in jobs]
    pixels = {sid: f for (_, sid), f in zip(jobs, feats, strict=True)}
    result = {"dir": str(root), "gates_points_above_chance": gates, "families": {}}
    for f in fams:
        r = audit_family([s for _, s in by_fam[f]["train"]], [s for _, s in by_fam[f]["test"]], pixels)
        r["pass"] = all(r[b] <= r["chance"] + g for b, g in gates.items())
        result["families"][f] = r
    result["all_pass"] = all(r["pass"] for r in result["families"].values())
    path = Path(out) if out else root / "audit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return result, path


def format_table(result: dict) -> str:
    """A fixed-width table: accuracy (%) of each baseline per family."""
    head = f"{'family':<20} {'n_test':>6} {'chance':>6} " + " ".join(f"{b:>8}" for b in BASELINES) + "  ok"
    lines = [head, "-" * len(head)]
    for f, r in result["families"].items():
        lines.append(
            f"{f:<20} {r['n_test']:>6} {r['chance']:>6.1f} "
            + " ".join(f"{r[b]:>8.1f}" for b in BASELINES)
            + ("  yes" if r["pass"] else "  NO")
        )
    return "\n".join(lines)

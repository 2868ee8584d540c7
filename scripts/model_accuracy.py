"""The accuracy figures issue 6 asks for, printed (tests/unit/test_models_accuracy.py asserts the same ones).

    .venv/bin/python scripts/model_accuracy.py

fp32 ONNX against the float64 numpy reference on 32 mixed-length sentences run as one padded batch;
paraphrase against unrelated cosine; int8 cosine to fp32 through the Embedder on the test texts.
Uses the models under AIFLEET_HOME (built when missing).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from models.build import artefact_path, ensure_model
from models.embedder import Embedder, new_session_pool
from models.reference import ReferenceEncoder
from models.session import create_session
from models.tokenize import TextTokenizer, pad_ids

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "paraphrases.py"


def _data():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("paraphrases", FIXTURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    data = _data()
    for variant in ("fp32", "int8"):
        ensure_model(variant)  # type: ignore[arg-type]
    texts = list(data.MIXED_LENGTH_SENTENCES)
    ids = TextTokenizer().encode(texts)
    got = create_session(artefact_path("fp32"), "cpu").run(pad_ids(ids))
    want = ReferenceEncoder().embed_batch(ids)
    fp32 = Embedder("fp32", "cpu", pool=new_session_pool())
    int8 = Embedder("int8", "cpu", pool=new_session_pool())
    pairs, unrelated = data.PARAPHRASE_PAIRS, data.UNRELATED_PAIRS
    para = np.sum(fp32.embed([a for a, _ in pairs]) * fp32.embed([b for _, b in pairs]), axis=1)
    unrel = np.sum(fp32.embed([a for a, _ in unrelated]) * fp32.embed([b for _, b in unrelated]), axis=1)
    sample = texts + [t for pair in pairs for t in pair]
    cos = np.sum(fp32.embed(sample) * int8.embed(sample), axis=1)
    print(
        json.dumps(
            {
                "fp32_vs_numpy_max_abs_diff": float(np.abs(got - want).max()),
                "sentences": len(texts),
                "token_lengths": [min(len(x) for x in ids), max(len(x) for x in ids)],
                "paraphrase_cos_min": float(para.min()),
                "unrelated_cos_max": float(unrel.max()),
                "int8_vs_fp32_cos_mean": float(cos.mean()),
                "int8_vs_fp32_cos_min": float(cos.min()),
                "int8_texts": len(sample),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

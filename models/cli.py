"""``aifleet models ...``: build the ONNX artefacts, check a device, benchmark inference.

``app`` is a typer app; the gateway's CLI mounts it. Run standalone with ``python -m models.cli``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.build import CPU_VARIANTS, VARIANTS, Variant, build_variants, ensure_model
from models.errors import ExecutionProviderUnavailable, ModelError

if TYPE_CHECKING:
    from models.embedder import SessionKey
    from models.pool import ModelPool
    from models.session import EncoderSession

app = typer.Typer(help="Local ONNX inference models: build, check, bench.", no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

CHECK_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
HomeOpt = Annotated[Path | None, typer.Option(help="aifleet home (default: AIFLEET_HOME or ~/.aifleet).")]
VariantsOpt = Annotated[list[str] | None, typer.Option("--variant", "-v", help="Variant(s); default fp32, int8.")]


def _parse_variants(raw: list[str] | None, default: tuple[Variant, ...]) -> list[Variant]:
    chosen = raw or list(default)
    bad = [v for v in chosen if v not in VARIANTS]
    if bad:
        raise typer.BadParameter(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    return chosen  # type: ignore[return-value]


@app.command()
def build(
    variant: VariantsOpt = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when the cache is fresh.")] = False,
    home: HomeOpt = None,
) -> None:
    """Build the CPU variants (fp32, int8) of all-MiniLM-L6-v2 from the shipped weights, into the cache."""
    variants = _parse_variants(variant, CPU_VARIANTS)
    start = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("checking cache", total=None)
        try:
            results = build_variants(
                variants, home=home, force=force, progress=lambda m: bar.update(task, description=m)
            )
        except ModelError as exc:
            err_console.print(f"[red]build failed:[/red] {exc}")
            raise typer.Exit(1) from exc
        bar.update(task, description="done")
    table = Table(title=f"models built in {time.perf_counter() - start:.1f}s")
    for col in ("variant", "built now", "seconds", "MB", "fused ops", "path"):
        table.add_column(col)
    for v, r in results.items():
        ops = r.entry.get("ops", {})
        fused = ", ".join(f"{k.split('.')[-1]} x{n}" for k, n in ops.items() if k.startswith("com.microsoft."))
        size_mb = f"{r.path.stat().st_size / 1e6:.1f}"
        table.add_row(v, "yes" if r.built else "cached", f"{r.seconds:.1f}", size_mb, fused, str(r.path))
    console.print(table)


def fp32_reference(
    home: Path | None = None, pool: ModelPool[SessionKey, EncoderSession] | None = None
) -> tuple[list[str], np.ndarray]:
    """The check's sample texts and their fp32-on-CPU embeddings: what every device's variant is held to."""
    from models.corpus import SAMPLE_SENTENCES
    from models.embedder import Embedder, new_session_pool

    texts = list(SAMPLE_SENTENCES)
    return texts, Embedder("fp32", "cpu", home=home, pool=pool or new_session_pool()).embed(texts)


def write_reference(out: Path, home: Path | None = None) -> int:
    """``fp32_reference`` saved (``.npz``) for a ``check`` on a machine without the fp32 model."""
    texts, vectors = fp32_reference(home)
    with out.open("wb") as fh:
        np.savez(fh, texts=np.array(texts), embeddings=vectors)
    return len(texts)


def _reference_from(path: Path) -> tuple[list[str], np.ndarray]:
    with np.load(path) as data:
        return [str(t) for t in data["texts"]], np.asarray(data["embeddings"], dtype=np.float32)


def run_check(
    device: Literal["cpu", "cuda"], home: Path | None = None, max_batch: int = 512, reference: Path | None = None
) -> dict[str, Any]:
    """Build the device's variant, make sure the requested provider is really active, and run batch 1..max_batch.

    The device's variant is compared with fp32 on the CPU: computed here, or read from ``reference`` (written
    by :func:`write_reference`) where the fp32 model is not at hand, as on a GPU box given only the fp16 one.
    Raises :class:`ExecutionProviderUnavailable` when the provider is not the active one.
    """
    from models.corpus import SAMPLE_SENTENCES
    from models.embedder import Embedder, new_session_pool
    from models.session import available_providers, create_session

    variant: Variant = "fp16" if device == "cuda" else "fp32"
    path = ensure_model(variant, home=home)

    session = create_session(path, device, strict=True)  # raises before any batch runs
    pool = new_session_pool(1 << 40)
    embedder = Embedder(variant, device, home=home, pool=pool, max_batch_size=max_batch)
    rows = []
    for size in (b for b in CHECK_BATCHES if b <= max_batch):
        texts = [SAMPLE_SENTENCES[i % len(SAMPLE_SENTENCES)] for i in range(size)]
        embedder.embed(texts)  # warm this shape
        t0 = time.perf_counter()
        out = embedder.embed(texts)
        ms = (time.perf_counter() - t0) * 1000
        norms = np.linalg.norm(out, axis=1)
        rows.append(
            {
                "batch_size": size,
                "ms": round(ms, 3),
                "sentences_per_s": round(size / (ms / 1000), 1),
                "finite": bool(np.isfinite(out).all()),
                "max_norm_error": float(np.abs(norms - 1).max()),
            }
        )
    sample, want = _reference_from(reference) if reference is not None else fp32_reference(home, pool)
    cos = np.sum(embedder.embed(sample) * want, axis=1)
    ok = all(r["finite"] and r["max_norm_error"] < 1e-2 for r in rows) and float(cos.min()) > 0.99
    return {
        "ok": ok,
        "device": device,
        "variant": variant,
        "model_path": str(path),
        "available_providers": available_providers(),
        "session": session.report.as_dict(),
        "embedder_provider": embedder.report.provider,
        "agreement_vs_fp32_cpu": {
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "texts": len(sample),
            "reference": str(reference) if reference is not None else "computed here",
        },
        "batches": rows,
    }


@app.command()
def check(
    device: Annotated[str, typer.Option(help="cuda or cpu.")] = "cuda",
    max_batch: Annotated[int, typer.Option(help="Largest batch to run.")] = 512,
    reference: Annotated[
        Path | None, typer.Option(help="fp32 embeddings from `models reference` (else computed here).")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Confirm the requested provider is really active and run fp16 (cuda) or fp32 (cpu) at batch 1..512 (JSON)."""
    if device not in ("cuda", "cpu"):
        raise typer.BadParameter("device must be cuda or cpu")
    try:
        result = run_check(device, home, max_batch, reference)  # type: ignore[arg-type]
    except ExecutionProviderUnavailable as exc:
        err_console.print(f"[red]{exc}[/red]")
        print(json.dumps({"ok": False, "device": device, "error": str(exc)}, indent=2))
        raise typer.Exit(2) from exc
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("reference")
def reference_cmd(
    out: Annotated[Path, typer.Option(help="Where to write the .npz.")] = Path("reference.npz"),
    home: HomeOpt = None,
) -> None:
    """fp32-on-CPU embeddings of the check's texts, for `check --reference` on a machine without the fp32 model."""
    count = write_reference(out, home)
    console.print(f"wrote {count} fp32 embeddings to {out}")


def _csv_ints(raw: str) -> list[int]:
    try:
        values = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {raw!r}") from exc
    if not values or min(values) < 1:
        raise typer.BadParameter("batch sizes must be positive")
    return values


def render_bench(report: dict[str, Any]) -> Table:
    """The bench report as a rich table."""
    variants = list(report["results"])
    table = Table(
        title=f"{report['model']} on {report['device']} "
        f"({report['cpu_count']} CPUs, threads={report['intra_op_threads'] or 'default'}, "
        f"~{report['mean_tokens_per_text']} tokens/text)"
    )
    table.add_column("batch", justify="right")
    for v in variants:
        table.add_column(f"{v} sent/s", justify="right")
        table.add_column(f"{v} p50 ms", justify="right")
        table.add_column(f"{v} p95 ms", justify="right")
    if "int8_vs_fp32" in report:
        table.add_column("int8/fp32", justify="right")
    for i, row in enumerate(report["results"][variants[0]]):
        cells = [str(row["batch_size"])]
        for v in variants:
            r = report["results"][v][i]
            cells += [f"{r['sentences_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}"]
        if "int8_vs_fp32" in report:
            cells.append(f"{report['int8_vs_fp32'][str(row['batch_size'])]:.2f}x")
        table.add_row(*cells)
    return table


@app.command()
def bench(
    variant: VariantsOpt = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,2,4,8,16,32,64,128",
    seconds: Annotated[float, typer.Option(help="Measuring time per variant and batch size.")] = 1.0,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (default: all cores).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    microbatch: Annotated[bool, typer.Option(help="Also measure single-sentence callers via MicroBatcher.")] = True,
    concurrency: Annotated[int, typer.Option(help="Concurrent callers in the micro-batched run.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    home: HomeOpt = None,
) -> None:
    """Sentences/s and latency p50/p95 per batch size, fp32 vs int8, plus micro-batched vs batch-1 throughput."""
    from models.bench import run_infer_bench

    if device not in ("cpu", "cuda", "auto"):
        raise typer.BadParameter("device must be cpu, cuda or auto")
    quiet = Console(stderr=True, quiet=as_json)
    try:
        report = run_infer_bench(
            _parse_variants(variant, CPU_VARIANTS),
            _csv_ints(batch_sizes),
            device=device,  # type: ignore[arg-type]
            seconds=seconds,
            intra_op_threads=threads,
            microbatch=microbatch,
            concurrency=concurrency,
            home=home,
            progress=quiet.log,
        )
    except ModelError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(render_bench(report))
    for v, mb in report.get("microbatch", {}).items():
        for run in mb["runs"]:
            console.print(
                f"micro-batched {v}: {run['sentences_per_s']:.0f} sent/s with {run['concurrency']} callers, "
                f"{run['batches_in_flight']} batch(es) in flight, threads={run['intra_op_threads'] or 'default'} "
                f"(mean batch {run['mean_batch']}, p50 {run['p50_ms']:.1f} ms)"
            )
        console.print(
            f"  vs back-to-back batch-1 {mb['batch1_sentences_per_s']:.0f} sent/s: {mb['ratio_vs_batch1']:.2f}x"
        )
    every_core = report.get("batch1_all_cores")
    if every_core:
        rates = ", ".join(f"{v} {r:.0f} sent/s" for v, r in every_core["sentences_per_s"].items())
        ratio = every_core.get("int8_vs_fp32")
        console.print(
            f"batch 1 on all {every_core['cores']} cores (one single-threaded run per core): {rates}"
            + (f"; int8/fp32 {ratio:.2f}x" if ratio else "")
        )
    best = report.get("batch1_best", {})
    if best.get("int8_vs_fp32"):
        parts = "; ".join(f"{v} {b['sentences_per_s']:.0f} sent/s ({b['config']})" for v, b in best["variants"].items())
        console.print(f"batch 1, each variant at its best here: {parts}; int8/fp32 {best['int8_vs_fp32']:.2f}x")


def main() -> None:
    """Entry point for ``python -m models.cli``."""
    app()


if __name__ == "__main__":
    main()

"""``aifleet simulate routing``: the policy comparison and the overflow minute, as tables or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streams.catalog import load_catalog
from streams.routing.simulate import OverflowResult, PolicyResult, compare_policies, overflow, workload
from streams.settings import DEFAULT_CONFIG_FILE

app = typer.Typer(help="Deterministic simulations of aifleet's policies.", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Simulations (no broker, no providers)."""


def _policy_table(results: list[PolicyResult], n: int, seed: int, tier: str) -> Table:
    premium = next(r.cost_usd for r in results if r.policy == "always-premium")
    common = results[0].requests
    title = f"Routing policies over {n} requests (seed {seed}, tier {tier})"
    if common != n:
        title += f": costs over the {common} that every policy could route"
    table = Table(title=title)
    columns = ("policy", "cost USD", "per 1k req", "vs premium", "floor", "capability", "context", "unrouted")
    for col in (*columns, "providers"):
        table.add_column(col, justify="left" if col in ("policy", "providers") else "right")
    for r in results:
        table.add_row(
            r.policy,
            f"{r.cost_usd:,.4f}",
            f"{1000 * r.cost_usd / max(1, r.requests):,.4f}",
            f"{100 * (r.cost_usd / premium - 1):+.1f}%" if premium else "-",
            str(r.floor_violations),
            str(r.capability_violations),
            str(r.context_violations),
            str(r.unrouted),
            ", ".join(f"{p} {c}" for p, c in sorted(r.providers.items(), key=lambda kv: -kv[1])),
        )
    return table


def _overflow_tables(o: OverflowResult, demand: float) -> list[Table]:
    summary = (
        f"{o.demand_requests} requests, {o.demand_tokens:,} tokens in {o.seconds:.0f} s "
        f"(last 60 s at {demand:.0%} of primaries' rpm); threshold {o.threshold:.0%}"
    )
    table = Table(title=f"Overflow: {summary}")
    for col in ("provider", "role", "requests", "peak req/60s", "rpm", "peak tok/60s", "tpm", "first at s"):
        table.add_column(col, justify="left" if col in ("provider", "role") else "right")
    for p in o.providers:
        table.add_row(
            p.provider,
            p.role,
            str(p.requests),
            str(p.peak_requests_60s),
            str(p.rpm),
            f"{p.peak_tokens_60s:,}",
            f"{p.tpm:,}",
            "-" if p.first_at_s is None else f"{p.first_at_s:.2f}",
        )
    names = [p.provider for p in o.providers if p.requests] + (["(unserved)"] if o.unserved else [])
    timeline = Table(title="Overflow timeline (requests served per slice)")
    timeline.add_column("seconds")
    for name in names:
        timeline.add_column(name, justify="right")
    for start, end, counts in o.timeline:
        timeline.add_row(f"{start:.0f}-{end:.0f}", *(str(counts.get(n, 0)) for n in names))
    checks = Table(title="Overflow checks")
    checks.add_column("check")
    checks.add_column("value", justify="right")
    for label, value in (
        ("secondaries first used at (s)", "-" if o.secondaries_first_at_s is None else f"{o.secondaries_first_at_s}"),
        ("secondary requests while primaries under threshold", str(o.secondary_before_threshold)),
        ("backup requests", str(o.backup_requests)),
        ("refused by a limiter, sent down the fallback list", str(o.refused_hops)),
        ("unserved", str(o.unserved)),
        ("every provider within rpm and tpm in every 60 s window", "yes" if o.within_limits else "NO"),
    ):
        checks.add_row(label, value)
    return [table, timeline, checks]


@app.command("routing")
def routing(
    requests: Annotated[int, typer.Option(help="Requests in the policy-comparison workload.")] = 2000,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 7,
    tier: Annotated[str, typer.Option(help="Tier of the workload's tenant.")] = "pro",
    demand: Annotated[float, typer.Option(help="Overflow minute's demand, x the primaries' rpm.")] = 1.25,
    config: Annotated[Path, typer.Option(help="Catalog TOML.")] = DEFAULT_CONFIG_FILE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Cost of the cost-aware policy vs always-premium vs round-robin, then the secondary-overflow minute."""
    catalog = load_catalog(config)
    results = compare_policies(catalog, workload(requests, seed, tier), tier)
    o = overflow(catalog, demand=demand)
    if as_json:
        doc: dict[str, Any] = {
            "workload": {"requests": requests, "seed": seed, "tier": tier},
            "policies": [
                {
                    "policy": r.policy,
                    "cost_usd": round(r.cost_usd, 9),
                    "floor_violations": r.floor_violations,
                    "capability_violations": r.capability_violations,
                    "context_violations": r.context_violations,
                    "unrouted": r.unrouted,
                    "providers": r.providers,
                }
                for r in results
            ],
            "overflow": o.as_dict(),
        }
        print(json.dumps(doc, indent=2))
        return
    console = Console()
    console.print(_policy_table(results, requests, seed, tier))
    for table in _overflow_tables(o, demand):
        console.print(table)

"""Sweep results: per (config, grid point) mean, standard deviation and per-seed values of mAP,
F1, AUC, point accuracy, cos and l2; reference runs (a teacher, a KD student); the share of the
teacher's point accuracy lost by KD that a row gives back; and the table files.

mAP, F1, AUC and point accuracy are in percent (as in the quickstart's table), cos and l2 as
they are; the standard deviation is the sample one (n - 1) over the seeds with a finite value
(nan with one seed).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# key, column title, scale, digits
METRICS = (("map", "mAP", 100, 2), ("f1", "F1", 100, 2), ("auc", "AUC", 100, 2), ("point_acc", "point acc", 100, 2),
           ("cos", "cos", 1, 3), ("l2", "l2", 1, 2))
RECOVERED = "recovered"


def metric_values(result: Mapping[str, Any], method: str = "gradcam") -> dict[str, float]:
    """One ``results.json`` as ``{metric: value}`` in table units (percent for mAP, F1, AUC and
    point accuracy); missing or ``null`` numbers are nan.

    Raises:
        ValueError: ``method`` was not evaluated.

    Example:
        >>> metric_values({"metrics": {"map": 0.5, "f1": 0.25}, "methods": {"gradcam": {"auc": 0.75,
        ...                "point_acc": 0.6, "cos": 0.9, "l2": None, "num_pairs": 10}}})
        {'map': 50.0, 'f1': 25.0, 'auc': 75.0, 'point_acc': 60.0, 'cos': 0.9, 'l2': nan, 'pairs': 10.0}
    """
    methods = result.get("methods", {})
    if method not in methods:
        raise ValueError(f"Expected results for method {method!r}, but they hold {', '.join(methods) or 'none'}.")
    scores = {**result.get("metrics", {}), **methods[method]}
    values = {}
    for key, _, scale, _ in METRICS:
        value = scores.get(key)
        values[key] = float("nan") if value is None else float(value) * scale
    values["pairs"] = float(methods[method].get("num_pairs") or 0)
    return values


def summarize(values: Mapping[Any, float]) -> dict[str, Any]:
    """Mean and sample standard deviation of the finite values, and every value by seed.

    Example:
        >>> summarize({0: 1.0, 1: 2.0, 2: 6.0})
        {'mean': 3.0, 'std': 2.6457513110645907, 'n': 3, 'values': {0: 1.0, 1: 2.0, 2: 6.0}}
        >>> summarize({0: 4.0, 1: float("nan")})["mean"], summarize({0: 4.0})["std"]
        (4.0, nan)
    """
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else float("nan")
    std = statistics.stdev(finite) if len(finite) > 1 else float("nan")
    return {"mean": mean, "std": std, "n": len(finite), "values": dict(values)}


def recovered_share(value: float, teacher: float, kd: float) -> float:
    """Share of the teacher's score lost by KD that ``value`` gives back: ``(value - kd) / (teacher - kd)``
    (nan when the teacher and KD are equal).

    Example:
        >>> recovered_share(70.0, 80.0, 60.0), recovered_share(60.0, 80.0, 60.0)
        (0.5, 0.0)
    """
    gap = teacher - kd
    return (value - kd) / gap if gap != 0 and math.isfinite(gap) else float("nan")


def reference_value(reference: Mapping[Any, Mapping[str, float]], seed: int, metric: str) -> float:
    """A reference's ``metric`` for ``seed``: that seed's run when the reference has one, else the
    mean over its runs.

    Example:
        >>> ref = {0: {"point_acc": 80.0}, 1: {"point_acc": 70.0}}
        >>> reference_value(ref, 1, "point_acc"), reference_value(ref, 5, "point_acc")
        (70.0, 75.0)
    """
    if seed in reference:
        return reference[seed][metric]
    return summarize({k: v[metric] for k, v in reference.items()})["mean"]


def aggregate(entries: Sequence[Mapping[str, Any]], method: str = "gradcam",
              references: Mapping[str, Mapping[Any, Mapping[str, float]]] | None = None) -> list[dict[str, Any]]:
    """One row per (config, grid point), in first-seen order.

    Args:
        entries: one per finished run: ``{"config": name, "grid": {key: value}, "seed": int,
            "result": results.json content}``.
        method: the attribution method whose localisation scores are reported.
        references: ``{name: {seed or None: metric_values(...)}}``; with ``teacher`` and ``KD``
            each row gets ``recovered``: :func:`recovered_share` of point accuracy per seed.

    Returns:
        rows ``{"config", "grid", "seeds", <metric>: summarize(...), "recovered": summarize(...) or None}``.

    Example:
        >>> def result(acc):
        ...     return {"metrics": {"map": 0.5, "f1": 0.5},
        ...             "methods": {"gradcam": {"auc": 0.9, "point_acc": acc, "cos": 0.8, "l2": 5.0, "num_pairs": 4}}}
        >>> rows = aggregate([{"config": "sswa", "grid": {"weight": "10"}, "seed": s, "result": result(a)}
        ...                   for s, a in ((0, 0.6), (1, 0.7))],
        ...                  references={"teacher": {None: {"point_acc": 80.0}}, "KD": {None: {"point_acc": 50.0}}})
        >>> rows[0]["point_acc"]["mean"], rows[0]["seeds"], [round(v, 4) for v in rows[0]["recovered"]["values"].values()]
        (65.0, [0, 1], [0.3333, 0.6667])
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for entry in entries:
        groups.setdefault((entry["config"], tuple(entry["grid"].items())), []).append(entry)
    references = references or {}
    rows = []
    for (config, grid), members in groups.items():
        members = sorted(members, key=lambda e: e["seed"])
        values = {e["seed"]: metric_values(e["result"], method) for e in members}
        row: dict[str, Any] = {"config": config, "grid": dict(grid), "seeds": list(values)}
        for key, *_ in METRICS:
            row[key] = summarize({seed: v[key] for seed, v in values.items()})
        row["pairs"] = summarize({seed: v["pairs"] for seed, v in values.items()})
        row[RECOVERED] = None
        if "teacher" in references and "KD" in references:
            row[RECOVERED] = summarize({
                seed: recovered_share(v["point_acc"], reference_value(references["teacher"], seed, "point_acc"),
                                      reference_value(references["KD"], seed, "point_acc"))
                for seed, v in values.items()})
        rows.append(row)
    return rows


# -- references -----------------------------------------------------------------------------------
def _seed_of(path: Path) -> int | None:
    seeds = [int(m.group(1)) for part in path.parts if (m := re.fullmatch(r"seed=(\d+)", part))]
    return seeds[-1] if seeds else None


def find_reference(path: str | os.PathLike, protocol: str, name: str = "") -> dict[int | None, Path]:
    """The ``results.json`` files of a reference, by seed: a ``results.json`` file, a folder
    holding one, a sweep run folder (``.../seed=0``), or a folder of sweep runs (one per seed,
    ``seed=N`` read from the path; ``results/<protocol>/results.json`` under each).

    Raises:
        FileNotFoundError: nothing found.
        ValueError: several runs for one seed (point at one config and grid point).
    """
    root = Path(path)
    what = f"`--reference {name}={path}`"
    if root.is_file():
        return {_seed_of(root.resolve().parent): root}
    if (root / "results.json").is_file():
        return {_seed_of(root.resolve()): root / "results.json"}
    found = sorted(root.glob(f"**/results/{protocol}/results.json")) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"Expected {what} to name a results.json, a run folder or a folder of runs with "
                                f"results/{protocol}/results.json, but found none there.")
    by_seed: dict[int | None, list[Path]] = {}
    for file in found:
        by_seed.setdefault(_seed_of(file.resolve()), []).append(file)
    clashes = {seed: files for seed, files in by_seed.items() if len(files) > 1}
    if clashes:
        seed, files = next(iter(clashes.items()))
        raise ValueError(f"{what} holds several runs for seed {seed} ({', '.join(str(f) for f in files[:3])}); "
                         "point it at one config and grid point.")
    return {seed: files[0] for seed, files in by_seed.items()}


def load_reference(path: str | os.PathLike, protocol: str, method: str = "gradcam",
                   name: str = "") -> dict[int | None, dict[str, float]]:
    """:func:`find_reference`'s files read as :func:`metric_values`."""
    files = find_reference(path, protocol, name)
    return {seed: metric_values(json.loads(file.read_text()), method) for seed, file in files.items()}


# -- tables ---------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0"


def _cell(summary: Mapping[str, Any] | None, digits: int, scale: float = 1.0) -> str:
    if summary is None or not math.isfinite(summary["mean"]):
        return "-"
    text = _fmt(summary["mean"] * scale, digits)
    return text if not math.isfinite(summary["std"]) else f"{text} ± {_fmt(summary['std'] * scale, digits)}"


def format_markdown(rows: Sequence[Mapping[str, Any]], grid_keys: Sequence[str],
                    references: Mapping[str, Mapping[Any, Mapping[str, float]]] | None = None,
                    title: str = "") -> str:
    """A summary table (mean ± std over seeds), a per-seed table, and the references.

    Example:
        >>> row = {"config": "kd", "grid": {}, "seeds": [0], "recovered": None, "pairs": summarize({0: 9.0}),
        ...        **{k: summarize({0: 0.5}) for k, *_ in METRICS}}
        >>> print(format_markdown([row], []).splitlines()[2])
        | kd | 1 | 0.50 | 0.50 | 0.50 | 0.50 | 0.500 | 0.50 |
    """
    has_recovered = any(row.get(RECOVERED) for row in rows)
    head = ["config", *grid_keys, "seeds", *(title for _, title, *_ in METRICS)]
    head += ["recovered (%)"] if has_recovered else []
    lines = [f"### {title}\n" if title else "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["config"], *(row["grid"].get(k, "") for k in grid_keys), str(len(row["seeds"]))]
        cells += [_cell(row[key], digits) for key, _, _, digits in METRICS]
        cells += [_cell(row.get(RECOVERED), 1, 100)] if has_recovered else []
        lines.append("| " + " | ".join(cells) + " |")
    head = ["config", *grid_keys, "seed", *(title for _, title, *_ in METRICS), "pairs"]
    head += ["recovered (%)"] if has_recovered else []
    lines += ["", "Per seed:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for seed in row["seeds"]:
            cells = [row["config"], *(row["grid"].get(k, "") for k in grid_keys), str(seed)]
            cells += [_fmt(row[key]["values"][seed], digits) for key, _, _, digits in METRICS]
            cells += [_fmt(row["pairs"]["values"][seed], 0)]
            if has_recovered:
                share = row[RECOVERED]["values"][seed]
                cells.append(_fmt(share * 100 if share is not None else None, 1))
            lines.append("| " + " | ".join(cells) + " |")
    for name, reference in (references or {}).items():
        summary = {key: summarize({s: v[key] for s, v in reference.items()}) for key, *_ in METRICS}
        seeds = ", ".join("one run" if s is None else str(s) for s in reference)
        text = ", ".join(f"{title} {_cell(summary[key], digits)}" for key, title, _, digits in METRICS)
        lines.append(f"\nReference {name} (seeds {seeds}): {text}")
    if has_recovered:
        lines.append("\nrecovered = (point acc - KD) / (teacher - KD), per seed where the references have that seed.")
    return "\n".join(lines).lstrip("\n") + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_tables(out: str | os.PathLike, tables: Sequence[tuple[str, str, list[dict[str, Any]]]],
                 grid_keys: Sequence[str],
                 references: Mapping[str, Mapping[str, Mapping[Any, Mapping[str, float]]]] | None = None
                 ) -> list[Path]:
    """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out``.

    Args:
        tables: ``[(protocol, method, rows), ...]`` (rows from :func:`aggregate`).
        grid_keys: the grid's short names (one column each).
        references: ``{protocol: {name: reference}}``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    references = references or {}
    text = [f"# Sweep results\n\nmAP, F1, AUC and point accuracy in %; mean ± std (n - 1) over seeds.\n"]
    for protocol, method, rows in tables:
        text.append(format_markdown(rows, grid_keys, references.get(protocol),
                                    title=f"protocol {protocol}, {method}"))
    (folder / "table.md").write_text("\n".join(text))
    fields = ["protocol", "method", "config", *grid_keys, "n", "seeds"]
    for key in [k for k, *_ in METRICS] + ["pairs", RECOVERED]:
        fields += [f"{key}_mean", f"{key}_std", f"{key}_values"]
    with (folder / "table.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for protocol, method, rows in tables:
            for row in rows:
                cells: list[Any] = [protocol, method, row["config"], *(row["grid"].get(k, "") for k in grid_keys),
                                    len(row["seeds"]), ";".join(str(s) for s in row["seeds"])]
                for key in [k for k, *_ in METRICS] + ["pairs", RECOVERED]:
                    summary = row.get(key)
                    if summary is None:
                        cells += ["", "", ""]
                        continue
                    cells += [summary["mean"], summary["std"],
                              ";".join(repr(summary["values"][s]) for s in row["seeds"])]
                writer.writerow(["nan" if isinstance(c, float) and not math.isfinite(c) else c for c in cells])
    payload = {"grid_keys": list(grid_keys),
               "tables": [{"protocol": p, "method": m, "rows": rows} for p, m, rows in tables],
               "references": {p: {name: {str(s): v for s, v in ref.items()} for name, ref in refs.items()}
                              for p, refs in references.items()}}
    (folder / "table.json").write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return [folder / "table.md", folder / "table.csv", folder / "table.json"]

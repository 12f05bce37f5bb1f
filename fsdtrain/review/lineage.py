"""Lineage of the runs on a review page: which weights each run started from or evaluated, with the
facts that make a result traceable (data manifest digests, zones, git SHA, W&B artifacts).

The links come from what the runs recorded: a fine-tune's weights metadata names its starting
weights (``parent``: path, zones, manifests, git SHA, W&B artifact), an eval's ``report.json`` names
the weights it evaluated (``checkpoint``). A starting point that is not among the runs given still
appears, from the child's ``parent`` record, marked as not on the page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fsdtrain.review.runs import WEIGHTS_NAME, Run

__all__ = ["Node", "lineage"]


@dataclass
class Node:
    """One step of the lineage: a run on the page, or a starting point recorded by a child.

    Args:
        name: the run folder's name (or the parent weights' path).
        job_type: ``pretrain``, ``finetune``, ``eval``, ``run``, or ``weights`` for a recorded parent.
        facts: (label, value) lines shown on its card, in order.
        parent: index of the node it came from in the list :func:`lineage` returns, or None.
        on_page: False for a parent known only from a child's record.
    """

    name: str
    job_type: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    parent: int | None = None
    on_page: bool = True


def _key(path: str | os.PathLike | None) -> str | None:
    return os.path.realpath(path) if path else None


def _zones(meta) -> str:
    per_part = meta.trained_on_zones or {}
    if per_part:
        return "; ".join(f"{part}: {', '.join(z)}" for part, z in per_part.items())
    return ", ".join(meta.zones or [])


def _meta_facts(meta, wandb_config: dict) -> list[tuple[str, str]]:
    facts = []
    if meta is not None:
        facts += [
            ("weights", meta.weights or ""),
            ("global step", "" if meta.global_step is None else str(meta.global_step)),
            ("site zone", meta.site_zone or ""),
            ("trained on zones", _zones(meta)),
            ("countries", ", ".join(meta.countries_trained or [])),
            ("git SHA", meta.git_sha or ""),
            ("W&B artifact", meta.artifact or ""),
        ]
        facts += [(f"manifest {url}", digest[:16]) for url, digest in sorted((meta.manifests or {}).items())]
    elif wandb_config:
        facts += [
            ("site zone", str(wandb_config.get("site_zone", ""))),
            ("git SHA", str(wandb_config.get("git_sha", ""))),
        ]
        manifests = wandb_config.get("manifests")
        if isinstance(manifests, dict):
            facts += [(f"manifest {url}", str(d)[:16]) for url, d in sorted(manifests.items())]
    return [(k, v) for k, v in facts if v]


def _wandb_facts(run: Run) -> list[tuple[str, str]]:
    facts = []
    for w in run.wandb:
        what = f"{w.project}/{w.run_id}" + (f" ({w.job_type})" if w.job_type else "")
        if w.tags:
            what += " tags " + ", ".join(w.tags)
        facts.append(("W&B run", what))
        used = [a["name"] for a in w.used_artifacts]
        if used:
            facts.append(("W&B input", ", ".join(used)))
    return facts


def _run_node(run: Run) -> Node:
    config = run.wandb[-1].config if run.wandb else {}
    facts = _meta_facts(run.meta, config)
    if run.report is not None:
        facts.insert(0, ("evaluated", run.report.get("checkpoint") or "(baselines only)"))
        facts += [("eval data", url) for url in run.report.get("data", [])]
        recorded = config.get("lineage")  # the eval W&B run's record of the weights' artifacts
        if isinstance(recorded, dict):
            facts += [
                (f"W&B {k.replace('_', ' ')}", str(v))
                for k, v in recorded.items()
                if k.endswith("artifact") and v
            ]
    return Node(run.name, run.job_type, facts + _wandb_facts(run))


def lineage(runs: list[Run]) -> list[Node]:
    """Nodes of every run (and of every recorded parent not among them), each after its parent."""
    nodes = [_run_node(r) for r in runs]
    weights_of = {}
    for i, r in enumerate(runs):
        for path in (
            r.meta.weights if r.meta is not None else None,
            r.path / WEIGHTS_NAME if r.weights is not None else None,
        ):
            if path:
                weights_of[_key(path)] = i
    for i, r in enumerate(runs):
        source = None
        if r.meta is not None and r.meta.parent is not None:
            source = r.meta.parent.weights
        elif r.report is not None and r.report.get("checkpoint"):
            source = r.report["checkpoint"].split(" + ")[0]  # "<weights> + <head file>" under --head
        if not source:
            continue
        parent = weights_of.get(_key(source))
        if parent is None or parent == i:
            parent_meta = r.meta.parent if r.meta is not None else None
            facts = _meta_facts(parent_meta, {}) if parent_meta is not None else [("weights", source)]
            nodes.append(Node(str(Path(source)), "weights", facts, on_page=False))
            weights_of[_key(source)] = parent = len(nodes) - 1
        nodes[i].parent = parent
    return _ordered(nodes)


def _ordered(nodes: list[Node]) -> list[Node]:
    """Parents before children (depth-first from each root), parent indexes renumbered."""
    children: dict[int | None, list[int]] = {}
    for i, n in enumerate(nodes):
        children.setdefault(n.parent, []).append(i)
    order: list[int] = []

    def visit(i: int) -> None:
        order.append(i)
        for c in children.get(i, []):
            visit(c)

    for root in children.get(None, []):
        visit(root)
    order += [i for i in range(len(nodes)) if i not in order]  # a cycle (a run naming itself): shown anyway
    new_index = {old: new for new, old in enumerate(order)}
    out = []
    for old in order:
        n = nodes[old]
        out.append(
            Node(n.name, n.job_type, n.facts, None if n.parent is None else new_index[n.parent], n.on_page)
        )
    return out

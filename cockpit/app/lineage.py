"""The lineage tree of forks: children listed under their parent, with tree-drawing prefixes."""

from __future__ import annotations

from collections.abc import Sequence

from cockpit.app.messages import RunState


def tree_order(runs: Sequence[RunState]) -> list[tuple[RunState, str]]:
    """Runs in lineage order (roots oldest first, each followed by its forks) with the prefix
    that draws the tree ('', '├ ', '│ └ ', ...). A fork whose parent is gone is a root."""
    by_id = {r.run_id: r for r in runs}
    children: dict[str, list[RunState]] = {}
    roots: list[RunState] = []
    for run in runs:
        parent = run.snapshot.parent
        if parent and parent in by_id and parent != run.run_id:
            children.setdefault(parent, []).append(run)
        else:
            roots.append(run)
    out: list[tuple[RunState, str]] = []
    seen: set[str] = set()

    def visit(run: RunState, lead: str, branch: str) -> None:
        if run.run_id in seen:  # a cycle can only come from hand-edited folders
            return
        seen.add(run.run_id)
        out.append((run, lead + branch))
        kids = sorted(children.get(run.run_id, []), key=lambda r: (r.snapshot.created, r.run_id))
        deeper = lead + ("" if not branch else "│ " if branch == "├ " else "  ")
        for i, kid in enumerate(kids):
            visit(kid, deeper, "└ " if i == len(kids) - 1 else "├ ")

    for root in sorted(roots, key=lambda r: (r.snapshot.created, r.run_id)):
        visit(root, "", "")
    for run in runs:  # runs caught in a cycle still get a row
        if run.run_id not in seen:
            visit(run, "", "")
    return out

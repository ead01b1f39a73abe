"""No circle between any two project modules, counting imports inside functions too.

The layer rules (engine <- app <- worker) are import-linter contracts in pyproject.toml, run by
scripts/test.sh; this adds what they do not say: no cycle at module level anywhere.
"""

import grimp

PACKAGES = ("qaas_engine", "app", "worker")


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:  # iterative: the graph is deep enough to matter
        nonlocal counter
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                self_import = node in graph.find_modules_directly_imported_by(node)
                if len(component) > 1 or self_import:
                    found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_project_modules():
    graph = grimp.build_graph(*PACKAGES)
    assert strongly_connected(graph) == []


def test_the_check_finds_a_cycle_when_there_is_one():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert strongly_connected(graph) == [["a", "b", "c"]]

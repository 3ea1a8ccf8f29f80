"""The package layout stays acyclic: no module imports another that (directly or not) imports it back.

import-linter's contracts (pyproject.toml) keep the layers apart; this keeps each layer free of cycles,
which imports hidden inside functions used to paper over."""

from __future__ import annotations

import grimp


def test_no_import_cycles_in_macllm_or_tui():
    graph = grimp.build_graph("macllm", "tui")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, "import cycles: " + "; ".join(cycles)

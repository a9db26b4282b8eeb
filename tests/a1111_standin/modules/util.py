"""Stand-in for the part of `modules.util` the callback ordering uses."""


def topological_sort(dependencies):
    """`dependencies`: name -> names that must come first. Returns every key once, each after its
    dependencies, otherwise in the dict's order (depth first, as the webui's). Dependencies that are
    not keys are ignored and a cycle is broken where it is found, without an error."""
    seen = set()
    order = []

    def visit(name):
        seen.add(name)
        for before in dependencies.get(name, ()):
            if before in dependencies and before not in seen:
                visit(before)
        order.append(name)

    for name in dependencies:
        if name not in seen:
            visit(name)
    return order

"""The library's core: what every token-reduction family shares (towers, attention, keep/merge, costs), the
family registry and the OpenCLIP glue. It imports no family and no tool: families import it, tools import both.
"""

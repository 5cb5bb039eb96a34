"""MkDocs hook: write ``reference/components.md`` from :mod:`boltzbench.registry` at each build.

The page lists every built-in system, sampler and metric with its parameters (name, type,
default, help, and for systems whether the parameter is physical), read from the classes
themselves, so the page cannot drift from the code. Installed plugins are left out: the
page documents boltzbench, whatever else the building environment holds.

Also usable on its own: ``python docs/gen_components.py > components.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

PAGE = "reference/components.md"


def _cell(value: object) -> str:
    """A value as a Markdown table cell: code-formatted, pipes escaped, one line."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return f"`{text}`" if text else ""


def _text(value: str) -> str:
    return " ".join(value.split()).replace("|", "\\|")


def _summary(obj: object) -> str:
    """The first paragraph of an object's docstring, on one line."""
    doc = inspect.getdoc(obj) or ""
    doc = re.sub(r":(?:func|class|mod|data|meth|attr):", "", doc)  # Sphinx roles read as code
    return " ".join(doc.split("\n\n")[0].split())


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "required"


def parameter_table(cls: type, physical: bool) -> list[str]:
    """Markdown rows of a system's or sampler's parameters (its dataclass init fields)."""
    fields = cls.parameters()
    if not fields:
        return ["No parameters.", ""]
    head = "| parameter | type | default | " + ("physical | " if physical else "") + "help |"
    rule = "|---|---|---|" + ("---|" if physical else "") + "---|"
    rows = [head, rule]
    for f in fields:
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)
        phys = ("yes | " if f.metadata.get("physical", True) else "no | ") if physical else ""
        rows.append(f"| `{f.name}` | {_cell(kind)} | {_cell(_default(f))} | {phys}"
                    f"{_text(f.metadata.get('help', ''))} |")
    return rows + [""]


def components_markdown() -> str:
    """The whole page, built from the built-in tables of :mod:`boltzbench.registry`."""
    from boltzbench.registry import BUILTIN, registry

    out = ["# Systems, samplers and metrics", "",
           "Generated from `boltzbench.registry` by `docs/gen_components.py` at each docs build: "
           "the parameters, types, defaults and help texts are read from the classes. "
           "`boltzbench list` prints the same from the command line, plugins included. "
           "A matrix sets a parameter as `params = { name = value }`; an unknown name or a "
           "wrong type exits 2, naming the field.", ""]
    for kind, title in (("systems", "Systems"), ("samplers", "Samplers")):
        reg = registry(kind)
        out += [f"## {title}", ""]
        for name in sorted(BUILTIN[kind]):
            cls = reg.load(name)
            out += [f"### `{name}`", "", f"`{BUILTIN[kind][name]}`", "",
                    _text(getattr(cls, "description", "") or _summary(cls)), ""]
            citation = getattr(cls, "citation", "")
            if citation:
                out += [f"Source: {_text(citation)}", ""]
            if kind == "systems":
                metrics = ", ".join(f"`{m}`" for m in cls.default_metrics)
                out += [f"Default metrics: {metrics}.", ""]
            out += parameter_table(cls, physical=(kind == "systems"))
    out += ["## Metrics", "",
            "Each metric is a function `f(samples, reference)` returning a float, or None "
            "when undefined. Definitions and sources: [Metric definitions](metrics.md).", "",
            "| metric | function | definition |", "|---|---|---|"]
    reg = registry("metrics")
    for name in sorted(BUILTIN["metrics"]):
        out.append(f"| `{name}` | `{BUILTIN['metrics'][name]}` | {_text(_summary(reg.load(name)))} |")
    return "\n".join(out) + "\n"


def on_files(files, config):  # noqa: ANN001 - the MkDocs hook signature
    """Add the generated page to the site's files (MkDocs ≥ 1.6, ``File.generated``)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=components_markdown()))
    return files


if __name__ == "__main__":
    print(components_markdown(), end="")

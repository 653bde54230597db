"""The package's import structure, read from its source (nothing imported): no import
circle between modules, no private (underscore) name used across modules."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def modules(pkg: pathlib.Path) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py file under the package folder `pkg`."""
  out = {}
  for f in sorted(pkg.rglob("*.py")):
    name = ".".join(f.relative_to(pkg.parent).with_suffix("").parts)
    out[name.removesuffix(".__init__")] = f
  return out


def imports(mods: dict[str, pathlib.Path]) -> tuple[dict[str, set[str]], list[str]]:
  """Each module's imports of other modules of the package (a package importing its own
  submodules left out: that is no circle of design), and the private names taken across
  modules (`from a import _b`, `a._b`)."""
  edges, private = {m: set() for m in mods}, []
  for m, f in mods.items():
    tree = ast.parse(f.read_text())
    aliases = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for al in node.names:
          if al.name in mods:
            edges[m].add(al.name)
            aliases[al.asname or al.name] = al.name
      elif isinstance(node, ast.ImportFrom):
        src = node.module or ""
        if node.level:
          parts = m.split(".")
          pkg = parts if f.name == "__init__.py" else parts[:-1]
          pkg = pkg[:len(pkg) - (node.level - 1)]
          src = ".".join(pkg + ([node.module] if node.module else []))
        for al in node.names:
          sub = f"{src}.{al.name}"
          if sub in mods:
            edges[m].add(sub)
            aliases[al.asname or al.name] = sub
          elif src in mods:
            edges[m].add(src)
            if al.name.startswith("_"):
              private.append(f"{m} takes {src}.{al.name}")
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__") and aliases[node.value.id] != m):
        private.append(f"{m} uses {aliases[node.value.id]}.{node.attr}")
  for m in edges:
    own = mods[m].name == "__init__.py"
    edges[m] = {d for d in edges[m] if d != m and not (own and d.startswith(m + "."))}
  return edges, sorted(set(private))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The import circles: strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, comps = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        comps.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return comps


def test_mer_jax_has_no_import_circle_and_no_private_name_across_modules():
  mods = modules(ROOT / "mer_jax")
  assert len(mods) > 40  # the whole package was read
  edges, private = imports(mods)
  assert cycles(edges) == []
  assert private == []


def test_the_check_finds_a_circle_and_private_names(tmp_path):
  """On a hand-made package: a -> b -> c -> a is one circle; d imports a (no circle);
  `from .a import _x` and `b._y` are private uses; the package importing its own
  submodules and a module using its own `_z` are not."""
  pkg = tmp_path / "p"
  (pkg / "sub").mkdir(parents=True)
  files = {
      "__init__.py": "from p import a, d\n",
      "a.py": "from p import b\n_x = 1\n",
      "b.py": "import p.sub.c\n_y = 2\n",
      "sub/__init__.py": "",
      "sub/c.py": "from ..a import _x\nfrom p import b\nprint(b._y)\n",
      "d.py": "from p import a\n_z = 3\nprint(_z)\n",
  }
  for name, text in files.items():
    (pkg / name).write_text(text)
  edges, private = imports(modules(pkg))
  assert cycles(edges) == [["p.a", "p.b", "p.sub.c"]]
  assert private == ["p.sub.c takes p.a._x", "p.sub.c uses p.b._y"]

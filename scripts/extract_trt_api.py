"""Regenerates the API tables `ladon_deploy/engines/api_tables/*.json` that `python -m ladon_deploy.engines.api_check`
checks the package against (no network there: the tables are committed).

    python scripts/extract_trt_api.py --tensorrt-git DIR [--pycuda-git DIR] [--wheels DIR] [--cuda-python-wheels DIR]

--tensorrt-git: a clone (or bare git dir) of github.com/NVIDIA/TensorRT. For each release in TENSORRT_REFS the Python
  binding sources at that tag (python/src/**/*.cpp, python/docstrings/**/*.h, the package's __init__.py) are parsed:
  pybind11 `py::class_<...>(scope, "Name")` / `py::enum_<...>` declarations and their `.def(...)`, `.def_static`,
  `.def_property[_readonly]`, `.def_readwrite/readonly`, `.value(...)`, `.export_values()` chains, keyword names and
  defaults (`"name"_a = default`, `py::arg("name")`), constructors (`py::init`), overloads, deprecation
  (`utils::deprecate*` wrappers, "[DEPRECATED]" docstrings) and the methods a Python subclass overrides (the names
  the trampoline classes look up with PYBIND11_OVERLOAD*/getOverride/get_override).
--wheels: PyPI binding wheels (tensorrt-bindings 8.6.1, tensorrt-cu12-bindings 10.x/11.x, `pip download --no-deps`):
  each table's member names and keyword names are looked up among the strings of the wheel's extension module (it
  cannot be imported without libnvinfer); the table records how many were found.
--pycuda-git: a clone of github.com/inducer/pycuda: src/wrapper/wrap_cudadrv.cpp (Boost.Python) and pycuda/driver.py.
--onnxruntime-wheels: onnxruntime-gpu wheels (one per release the targets use): the TensorRT execution-provider option
  names found in each release's provider library and binding module.
--cuda-python-wheels: cuda-python / cuda-bindings wheels (their .pyx sources carry every function's signature and
  numpydoc "Returns" section); the installed cuda-bindings is read through inspect.

Dev-side tool (Python 3.8+), not part of the package.
"""
import argparse
import ast
import glob
import inspect
import json
import os
import re
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from ladon_deploy.atomic import write_text_atomically  # noqa: E402 (the repository's one atomic writer)

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ladon_deploy", "engines", "api_tables")

# version label -> git ref in NVIDIA/TensorRT (tags; the closest release tag where the exact version has none).
TENSORRT_REFS = {
    "8.0.1": "8.0.1",     # plain JetPack 4.6 (L4T R32.6.1)
    "8.2.1": "8.2.1",     # JetPack 4.6.1-4.6.x (L4T R32.7), the Nano
    "8.5.2": "8.5.2",     # JetPack 5.1 (L4T R35.2), the Xavier NX
    "8.6.1": "v8.6.1",
    "10.0.1": "v10.0.1",  # the server target's --check version (10.0)
    "10.16": "v10.16",    # the newest 10.x
    "11.0": "v11.0",
    "11.1": "v11.1",
}
TENSORRT_WHEELS = {"8.6.1": "tensorrt_bindings-8.6.1", "10.16": "tensorrt_cu12_bindings-10.16",
                   "11.1": "tensorrt_cu12_bindings-11.4"}

CHAIN_METHODS = ("def", "def_static", "def_property", "def_property_readonly", "def_property_static",
                 "def_property_readonly_static", "def_readwrite", "def_readonly", "def_readwrite_static",
                 "def_readonly_static", "value", "export_values", "def_buffer")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ------------------------------------------------------------------------------------------------ C++ scanning
def strip_comments(text):
    """C++ text without comments; string and character literals kept (raw strings included)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            delim_end = text.find("(", i + 2)
            delim = text[i + 2:delim_end]
            j = text.find(")" + delim + '"', delim_end)
            j = n if j < 0 else j + len(delim) + 2
            out.append(text[i:j])
            i = j
        elif c == '"' or (c == "'" and not (i > 0 and text[i - 1].isalnum())):
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def skip_literal(text, i):
    """Index after the string/char literal starting at i (i points at the quote, or at R of a raw string)."""
    if text.startswith('R"', i):
        delim_end = text.find("(", i + 2)
        delim = text[i + 2:delim_end]
        return text.find(")" + delim + '"', delim_end) + len(delim) + 2
    quote, j = text[i], i + 1
    while j < len(text) and text[j] != quote:
        j += 2 if text[j] == "\\" else 1
    return j + 1


def is_literal_start(text, i):
    c = text[i]
    if c == '"':
        return True
    if c == "R" and text.startswith('R"', i):
        return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
    return c == "'" and not (i > 0 and (text[i - 1].isalnum()))


def matching(text, i):
    """Index of the bracket closing the one at i ((, [, {), skipping literals and nested brackets."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack, j = [pairs[text[i]]], i + 1
    while j < len(text):
        if is_literal_start(text, j):
            j = skip_literal(text, j)
            continue
        c = text[j]
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if c != stack[-1]:
                raise ValueError("unbalanced %r at %d" % (c, j))
            stack.pop()
            if not stack:
                return j
        j += 1
    raise ValueError("unclosed bracket at %d" % i)


def matching_angle(text, i):
    depth, j = 0, i
    while j < len(text):
        if text[j] == "<":
            depth += 1
        elif text[j] == ">":
            depth -= 1
            if depth == 0:
                return j
        elif text[j] in "(":
            j = matching(text, j)
        j += 1
    raise ValueError("unclosed template at %d" % i)


def split_top(text, sep=","):
    """text split at top-level separators (brackets, braces, literals and template angle brackets respected)."""
    parts, depth, angle, start, j = [], 0, 0, 0, 0
    while j < len(text):
        if is_literal_start(text, j):
            j = skip_literal(text, j)
            continue
        c = text[j]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "<" and depth == 0 and re.search(r"[A-Za-z_>:]\s*$", text[start:j]) and \
                not re.search(r"<\s*$", text[:j]) and "=" not in text[j - 1:j]:
            angle += 1
        elif c == ">" and angle > 0 and depth == 0 and text[j - 1] != "-":
            angle -= 1
        elif c == sep and depth == 0 and angle == 0:
            parts.append(text[start:j].strip())
            start = j + 1
        j += 1
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def string_value(token):
    token = token.strip()
    match = re.match(r'^"((?:[^"\\]|\\.)*)"$', token)
    return match.group(1) if match else None


KEYWORD = re.compile(r'^(?:"(\w+)"_a|py::arg\("(\w+)"\))(?:\s*=\s*(.+))?$', re.S)


def parse_keywords(args):
    """[(name, default or None)] of the keyword declarations among a .def's arguments; None where there are none."""
    found = []
    for arg in args:
        match = KEYWORD.match(arg.strip())
        if match:
            default = match.group(3)
            found.append((match.group(1) or match.group(2), " ".join(default.split())[:60] if default else None))
    return found


def lambda_arity(text):
    """Parameter count of a C++ lambda `[...](params) ...`, or None."""
    match = re.match(r"^\s*\[[^\]]*\]\s*\(", text)
    if not match:
        return None
    start = match.end() - 1
    params = text[start + 1:matching(text, start)].strip()
    return 0 if not params or params == "void" else len(split_top(params))


def named_lambdas(text):
    """name -> parameter count of `static const auto name = [](...)` / `auto name = [](...)` lambdas in a file."""
    found = {}
    for match in re.finditer(r"\bauto\s+(\w+)\s*=\s*(?=\[)", text):
        arity = lambda_arity(text[match.end():match.end() + 4000])
        if arity is not None:
            found[match.group(1)] = arity
    return found


def function_arity(token, lambdas):
    """Arity of a bound callable: an inline lambda, a lambdas::name, py::init<A, B>(); None when unknown."""
    token = token.strip()
    arity = lambda_arity(token)
    if arity is not None:
        return arity
    match = re.match(r"^(?:\w+::)*(\w+)$", token)
    if match and match.group(1) in lambdas and not token.startswith("&"):
        return lambdas[match.group(1)]
    return None


# --------------------------------------------------------------------------------------------- pybind11 model
class Decl(object):
    def __init__(self, kind, cpp, template_args, scope, name, source):
        self.kind = kind  # "class" or "enum"
        self.cpp = cpp
        self.template_args = template_args
        self.scope = scope
        self.name = name
        self.source = source
        self.chain = []  # (method, args)


def parse_template(text):
    return [a.strip() for a in split_top(text)]


def base_name(cpp):
    cpp = re.sub(r"<.*>$", "", cpp.strip())
    return cpp.split("::")[-1]


def scan_declarations(text, source):
    """Every py::class_/py::enum_ declaration of one file with its chained calls (also those made later on a named
    variable: `py::class_<X> var(m, "X"); var.def(...);`)."""
    decls = []
    for match in re.finditer(r"py::(class_|enum_)\s*<", text):
        kind = "class" if match.group(1) == "class_" else "enum"
        lt = match.end() - 1
        gt = matching_angle(text, lt)
        template_args = parse_template(text[lt + 1:gt])
        j = gt + 1
        rest = text[j:j + 200]
        variable = None
        var_match = re.match(r"\s*(\w+)\s*([({])", rest)
        if var_match:
            variable = var_match.group(1)
            open_at = j + var_match.start(2)
        else:
            paren = re.match(r"\s*([({])", rest)
            if not paren:
                continue  # a type mention (e.g. a cast), not a declaration
            open_at = j + paren.start(1)
            before = text[max(0, match.start() - 80):match.start()]
            assigned = re.search(r"\b(\w+)\s*=\s*$", before)
            if assigned:
                variable = assigned.group(1)
        close = matching(text, open_at)
        args = split_top(text[open_at + 1:close])
        if len(args) < 2 or string_value(args[1]) is None:
            continue
        decl = Decl(kind, template_args[0], template_args[1:], args[0], string_value(args[1]), source)
        decl.chain.extend(parse_chain(text, close + 1))
        if variable:
            for use in re.finditer(r"(?<![\w.])%s\s*(?=\.)" % re.escape(variable), text[close:]):
                decl.chain.extend(parse_chain(text, close + use.end()))
        decls.append(decl)
    return decls


def parse_chain(text, i):
    """[(method, [args])] of a `.def(...).value(...)...` chain starting at i, up to the end of the statement."""
    chain = []
    while True:
        # Preprocessor lines inside a chain (#if CUDA_VERSION gates, EXPORT_ALL_BINDINGS) keep both branches: the
        # full binding wheels export everything.
        match = re.match(r"(?:\s*#[^\n]*)*\s*\.\s*(\w+)\s*\(", text[i:i + 400])
        if not match:
            return chain
        open_at = i + match.end() - 1
        close = matching(text, open_at)
        chain.append((match.group(1), split_top(text[open_at + 1:close])))
        i = close + 1


def docstrings(files):
    """'NamespaceDoc::name' -> text of the docstring headers (python/docstrings/**/*.h)."""
    found = {}
    for path in files:
        text = strip_comments(open(path, encoding="utf-8", errors="replace").read())
        for ns in re.finditer(r"namespace\s+(\w+)\s*\{", text):
            body = text[ns.end() - 1:matching(text, ns.end() - 1)]
            for const in re.finditer(r"(?:constexpr\s+)?(?:const\s+)?char\s+const\s*\*\s*(\w+)\s*=\s*|"
                                     r"(?:constexpr\s+)?const\s+char\s*\*\s*(\w+)\s*=\s*", body):
                name = const.group(1) or const.group(2)
                start = const.end()
                if start < len(body) and is_literal_start(body, start):
                    found["%s::%s" % (ns.group(1), name)] = body[start:skip_literal(body, start)]
    return found


DEPRECATED_DOC = re.compile(r"\[DEPRECATED\]|deprecated in TensorRT|Deprecated in TensorRT", re.I)


def trampolines(text):
    """C++ class name -> (override names, [base class names]) for every class/struct of a file."""
    found = {}
    for match in re.finditer(r"(?:template\s*<[^>]*>\s*)?(?:class|struct)\s+(\w+)\s*(?:final\s*)?(:[^{;]*)?\{", text):
        open_at = match.end() - 1
        try:
            body = text[open_at:matching(text, open_at)]
        except ValueError:
            continue
        names = set()
        for call in re.finditer(r"(?:PYBIND11_OVERLOAD\w*|PYBIND11_OVERRIDE\w*|[gG]et_?[oO]verride\w*)\s*\(", body):
            args = split_top(body[call.end():matching(body, call.end() - 1)])
            literal = [string_value(a) for a in args if string_value(a)]
            if literal:
                names.add(literal[0])
            elif call.group(0).startswith("PYBIND11") and len(args) >= 3 and "_NAME" not in call.group(0):
                names.add(args[2])
        # Names handed to a shared helper through variables (e.g. the allocators' "allocate"/"reallocate").
        if names or "getOverride" in body or "get_override" in body:
            for literal in re.finditer(r'"([a-z_][a-z0-9_]*)"', body):
                names.add(literal.group(1))
        bases = [base_name(b.replace("public", "").replace("private", "").replace("virtual", ""))
                 for b in split_top((match.group(2) or ":")[1:])] if match.group(2) else []
        if match.group(1) in found:
            old_names, old_bases = found[match.group(1)]
            names |= set(old_names)
            bases = old_bases + bases
        found[match.group(1)] = (sorted(names), bases)
    return found


def header_arities(paths):
    """(C++ class, method) -> parameter count, from the public headers (include/NvInfer*.h), where every declaration
    of that method in that class has the same count (else the pair is left out: arity unknown)."""
    counts = {}
    for path in paths:
        text = strip_comments(open(path, encoding="utf-8", errors="replace").read())
        for match in re.finditer(r"\bclass\s+(?:TENSORRTAPI\s+|TRT_DEPRECATED\s+)*(\w+)\s*(?::[^{;]*)?\{", text):
            open_at = match.end() - 1
            try:
                body = text[open_at + 1:matching(text, open_at)]
            except ValueError:
                continue
            for method in re.finditer(r"\b([a-z]\w*)\s*\(", body):
                close = matching(body, method.end() - 1)
                tail = body[close + 1:close + 40]
                if not re.match(r"\s*(?:const\s*)?(?:noexcept|override|=\s*0|;|\{|TRTNOEXCEPT)", tail):
                    continue  # a call inside an inline body, not a declaration
                params = body[method.end():close].strip()
                arity = 0 if params in ("", "void") else len(split_top(params))
                counts.setdefault((match.group(1), method.group(1)), set()).add(arity)
    return {key: values.pop() for key, values in counts.items() if len(values) == 1}


MEMBER_POINTER = re.compile(r"&(?:\w+::)*(\w+)::(\w+)\b")


def member_entry(kind, args, lambdas, docs, static=False, arities=None):
    """One .def / property / field as a table entry. arities: header_arities() for member functions bound without
    argument names."""
    rest = args[1:]
    # utils::deprecate*(...) wrappers mark a deprecated member; the ...InTrtRtxOnly ones only in TensorRT-RTX builds.
    deprecated = any("deprecate" in a and "RtxOnly" not in a for a in rest) or any(
        a.strip() in docs and DEPRECATED_DOC.search(docs[a.strip()]) for a in rest)
    if kind in ("def", "def_static"):
        keywords = parse_keywords(rest)
        arity = len(keywords) if keywords else (function_arity(rest[0], lambdas) if rest else None)
        if arity is not None and kind == "def" and not keywords and lambda_arity(rest[0]) is not None:
            arity -= 1  # the lambda's first parameter is self
        elif arity is not None and kind == "def" and not keywords and function_arity(rest[0], {}) is None:
            arity -= 1  # a named lambda: self first
        if arity is None and not keywords and rest and arities:
            pointer = MEMBER_POINTER.search(rest[0])
            if pointer and (pointer.group(1), pointer.group(2)) in arities:
                arity = arities[(pointer.group(1), pointer.group(2))]
        overload = {"arity": arity}
        if keywords:
            overload["args"] = [k for k, _ in keywords]
            defaults = {k: d for k, d in keywords if d is not None}
            if defaults:
                overload["defaults"] = defaults
        if deprecated:
            overload["deprecated"] = True
        return {"kind": "staticmethod" if (static or kind == "def_static") else "method", "overloads": [overload]}
    writable = kind in ("def_readwrite", "def_readwrite_static") or (
        kind in ("def_property", "def_property_static") and len(rest) >= 2 and rest[1].strip() != "nullptr")
    readable = not (kind in ("def_property", "def_property_static") and rest and rest[0].strip() == "nullptr")
    entry = {"kind": "property", "writable": writable}
    if not readable:
        entry["readable"] = False
    if deprecated:
        entry["deprecated"] = True
    return entry


def merge_member(members, name, entry):
    old = members.get(name)
    if old is None:
        members[name] = entry
    elif old["kind"] in ("method", "staticmethod") and entry["kind"] == old["kind"]:
        old["overloads"].extend(entry["overloads"])
    else:
        members[name] = entry  # a redefinition replaces (pybind11 does the same for properties)


def init_arity(token, lambdas):
    token = token.strip()
    match = re.match(r"^py::init\s*<(.*)>\s*\(\s*\)$", token, re.S)
    if match:
        inner = match.group(1).strip()
        return 0 if not inner else len(split_top(inner))
    match = re.match(r"^py::init\s*\((.*)\)$", token, re.S)
    if match:
        return function_arity(match.group(1), lambdas)
    return None


def build_table(files, docstring_files, init_py, headers=()):
    """The table of one TensorRT release from its binding sources (and its public headers, for the arity of member
    functions bound without argument names)."""
    docs = docstrings(docstring_files)
    arities = header_arities(headers)
    decls, trampoline_map, module_functions = [], {}, {}
    for path in files:
        text = strip_comments(open(path, encoding="utf-8", errors="replace").read())
        lambdas = named_lambdas(text)
        trampoline_map.update(trampolines(text))
        for decl in scan_declarations(text, os.path.basename(path)):
            decl.lambdas = lambdas
            decls.append(decl)
        for match in re.finditer(r"(?<![\w.])m\s*\.\s*def\s*\(", text):
            args = split_top(text[match.end():matching(text, match.end() - 1)])
            name = string_value(args[0]) if args else None
            if name:
                entry = member_entry("def_static", args, lambdas, docs, arities=arities)
                entry["kind"] = "function"
                merge_member(module_functions, name, entry)
    by_cpp = {}
    for decl in decls:
        by_cpp.setdefault(base_name(decl.cpp), decl)
    variables = {}
    for path in files:
        text = strip_comments(open(path, encoding="utf-8", errors="replace").read())
        for match in re.finditer(r"py::class_\s*<([^;{(]*?)>\s*(\w+)\s*[({]\s*\w+\s*,\s*\"(\w+)\"", text):
            variables[match.group(2)] = match.group(3)
    classes = {}
    for decl in decls:
        name = decl.name if decl.scope == "m" else "%s.%s" % (variables.get(decl.scope, decl.scope), decl.name)
        table = classes.setdefault(name, {"kind": decl.kind, "members": {}, "bases": [], "overridable": [],
                                          "source": decl.source})
        for arg in decl.template_args:
            cls = base_name(arg)
            if cls in by_cpp and by_cpp[cls].name != name and arg.strip().split("<")[0] == arg.strip().split("<")[0]:
                if not arg.strip().startswith("std::"):
                    table["bases"].append(by_cpp[cls].name)
            elif cls in trampoline_map or base_name(arg.split("<")[0]) in trampoline_map:
                table["overridable"].extend(resolve_overrides(base_name(arg.split("<")[0]), trampoline_map))
        exported = False
        for method, args in decl.chain:
            if method == "value" and args and string_value(args[0]):
                table["members"][string_value(args[0])] = {"kind": "enum_value"}
            elif method == "export_values":
                exported = True
            elif method == "def" and args and args[0].strip().startswith("py::init"):
                entry = member_entry("def", ["__init__"] + args[1:], decl.lambdas, docs)
                keywords = parse_keywords(args[1:])
                if not keywords:
                    entry["overloads"][0]["arity"] = init_arity(args[0], decl.lambdas)
                merge_member(table["members"], "__init__", entry)
            elif method in CHAIN_METHODS and args and string_value(args[0]):
                merge_member(table["members"], string_value(args[0]), member_entry(
                    method, args, decl.lambdas, docs, static=method.endswith("_static"), arities=arities))
        if exported and decl.scope != "m":
            scope_class = classes.setdefault(variables.get(decl.scope, decl.scope),
                                             {"kind": "class", "members": {}, "bases": [], "overridable": [],
                                              "source": decl.source})
            for member, entry in table["members"].items():
                if entry["kind"] == "enum_value":
                    scope_class["members"].setdefault(member, {"kind": "enum_value", "enum": name})
        if decl.scope != "m":
            parent = variables.get(decl.scope, decl.scope)
            classes.setdefault(parent, {"kind": "class", "members": {}, "bases": [], "overridable": [],
                                        "source": decl.source})["members"][decl.name] = {"kind": "class",
                                                                                           "class": name}
    for table in classes.values():
        table["bases"] = sorted(set(table["bases"]))
        table["overridable"] = sorted(set(table["overridable"]))
    python_names = python_module_names(init_py, classes)
    return {"classes": classes, "functions": module_functions, "python": python_names}


def resolve_overrides(cpp, trampoline_map, seen=None):
    seen = seen or set()
    if cpp in seen or cpp not in trampoline_map:
        return []
    seen.add(cpp)
    names, bases = trampoline_map[cpp]
    found = list(names)
    for base in bases:
        found.extend(resolve_overrides(base, trampoline_map, seen))
    return found


def python_module_names(init_py, classes):
    """Module-level names the package's pure-Python __init__.py defines, and class attributes it adds."""
    if not init_py or not os.path.isfile(init_py):
        return []
    # The packaging templates carry ##PLACEHOLDER## tokens (module names, versions) filled in at build time.
    tree = ast.parse(re.sub(r"##(\w+)##", r"PLACEHOLDER_\1", open(init_py, encoding="utf-8").read()))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and \
                        target.value.id in classes:
                    classes[target.value.id]["members"].setdefault(target.attr, {"kind": "attribute"})
        elif isinstance(node, ast.If):
            for child in ast.walk(node):
                if isinstance(child, ast.Assign):
                    for target in child.targets:
                        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and \
                                target.value.id in classes:
                            classes[target.value.id]["members"].setdefault(target.attr, {"kind": "attribute"})
    return sorted(n for n in names if not n.startswith("_") or n == "__version__")


def counts(table):
    classes = table["classes"]
    return {"classes": len(classes), "members": sum(len(c["members"]) for c in classes.values()),
            "functions": len(table["functions"]),
            "overridable": sum(len(c["overridable"]) for c in classes.values())}


def git_files(git_dir, ref, prefix, suffixes, dest):
    listing = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "--name-only", ref, "--", prefix],
                             capture_output=True, text=True, check=True).stdout.split()
    paths = []
    for name in listing:
        if name.endswith(suffixes):
            path = os.path.join(dest, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(subprocess.run(["git", "--git-dir", git_dir, "show", "%s:%s" % (ref, name)],
                                            capture_output=True, check=True).stdout)
            paths.append(path)
    return sorted(paths)


def commit_of(git_dir, ref):
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", ref + "^{commit}"], capture_output=True,
                          text=True, check=True).stdout.strip()


def wheel_binary(path):
    """The bytes of every extension module inside a wheel, joined."""
    with zipfile.ZipFile(path) as wheel:
        return b"\0".join(wheel.read(name) for name in wheel.namelist() if name.endswith(".so"))


def cross_check(table, wheel_path):
    """How many of the table's names and keyword names the wheel's binary holds as C strings (a name may be the tail
    of a longer string: linkers merge "COS" into "ACOS")."""
    data = wheel_binary(wheel_path)
    names, keywords = set(), set()
    for cls, entry in table["classes"].items():
        names.add(cls.split(".")[-1])
        for member, value in entry["members"].items():
            names.add(member)
            for overload in value.get("overloads", []):
                keywords.update(overload.get("args", []))
    names.update(table["functions"])
    missing = sorted(n for n in names if n.encode("ascii") + b"\0" not in data)
    missing_keywords = sorted(k for k in keywords if k.encode("ascii") + b"\0" not in data)
    return {"wheel": os.path.basename(wheel_path), "names": len(names), "names_in_wheel": len(names) - len(missing),
            "keywords": len(keywords), "keywords_in_wheel": len(keywords) - len(missing_keywords),
            "names_not_in_wheel": missing[:40], "keywords_not_in_wheel": missing_keywords[:40]}


def extract_tensorrt(git_dir, wheels_dir, work):
    written = []
    for version, ref in TENSORRT_REFS.items():
        dest = os.path.join(work, "trt-" + version)
        sources = git_files(git_dir, ref, "python/src", (".cpp",), dest)
        docs = git_files(git_dir, ref, "python/docstrings", (".h",), dest) + \
            git_files(git_dir, ref, "python/include", (".h",), dest)
        inits = git_files(git_dir, ref, "python/packaging", ("__init__.py",), dest)
        init_py = [p for p in inits if p.endswith(("packaging/tensorrt/__init__.py",
                                                   "bindings_wheel/tensorrt/__init__.py"))]
        headers = git_files(git_dir, ref, "include", (".h",), dest)
        table = build_table(sources, docs, init_py[0] if init_py else None, headers)
        table["version"] = version
        table["source"] = {"repository": "https://github.com/NVIDIA/TensorRT", "ref": ref,
                           "commit": commit_of(git_dir, ref),
                           "files": sorted(os.path.relpath(p, dest) for p in sources + init_py),
                           "headers": sorted(os.path.relpath(p, dest) for p in headers)}
        table["counts"] = counts(table)
        if wheels_dir and version in TENSORRT_WHEELS:
            candidates = sorted(glob.glob(os.path.join(wheels_dir, TENSORRT_WHEELS[version] + "*.whl")))
            if candidates:
                table["wheel_cross_check"] = cross_check(table, candidates[-1])
        written.append(write_table("tensorrt-%s.json" % version, table))
    return written


# ----------------------------------------------------------------------------------------------- CUDA bindings
def numpydoc_returns(doc):
    """Number of values a cuda-python call returns: the entries of its numpydoc 'Returns' section."""
    match = re.search(r"\n\s*Returns\s*\n\s*-+\s*\n(.*?)(?:\n\s*\n\s*(?:See Also|Notes|Examples)\s*\n|\Z)", doc or "",
                      re.S)
    if not match:
        return None
    lines = match.group(1).split("\n")
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return sum(1 for line in lines if line.strip() and len(line) - len(line.lstrip()) == indent)


def cuda_python_from_pyx(text):
    """functions {name: {"args": [...], "returns": n}}, enums {name: [members]}, classes {name: [attributes]}."""
    functions, enums, classes = {}, {}, {}
    for match in re.finditer(r"^def (\w+)\(([^)]*)\):\s*\n\s*\"\"\"(.*?)\"\"\"", text, re.M | re.S):
        args, optional = [], []
        for param in [p.strip() for p in match.group(2).split(",") if p.strip()]:
            # Cython forms: `size_t count`, `kind not None : cudaMemcpyKind`, `flags=0`
            name = param.split("=")[0].split(":")[0].replace("not None", "").strip().split()[-1].lstrip("*")
            args.append(name)
            if "=" in param:
                optional.append(name)
        functions[match.group(1)] = {"args": args, "returns": numpydoc_returns("\n" + match.group(3))}
        if optional:
            functions[match.group(1)]["optional"] = optional
    for match in re.finditer(r"^class (\w+)\((?:_FastEnum|IntEnum|_cyenum\.\w+|\w+)\):(.*?)(?=^\S)", text,
                             re.M | re.S):
        members = re.findall(r"^    (\w+) = ", match.group(2), re.M)
        if members:
            enums[match.group(1)] = sorted(set(members))
    for match in re.finditer(r"^cdef class (\w+):(.*?)(?=^\S)", text, re.M | re.S):
        attributes = re.findall(r"@property\s*\n\s*def (\w+)\(self\)", match.group(2))
        if attributes:
            classes[match.group(1)] = sorted(set(attributes))
    return functions, enums, classes


def cuda_python_live(module):
    """The same from an importable module (cuda-bindings installed here), through inspect and the docstrings."""
    functions, enums, classes = {}, {}, {}
    for name in dir(module):
        value = getattr(module, name)
        if name.startswith("cuda") and callable(value) and not isinstance(value, type):
            try:
                parameters = inspect.signature(value).parameters
            except (TypeError, ValueError):
                continue
            functions[name] = {"args": list(parameters), "returns": numpydoc_returns(value.__doc__)}
            optional = [p for p, spec in parameters.items() if spec.default is not inspect.Parameter.empty]
            if optional:
                functions[name]["optional"] = optional
        elif isinstance(value, type) and hasattr(value, "__members__"):
            enums[name] = sorted(value.__members__)
        elif isinstance(value, type) and name in ("cudaDeviceProp",):
            classes[name] = sorted(a for a in dir(value) if not a.startswith("_"))
    return functions, enums, classes


CUDA_RUNTIME_KEEP_ENUMS = ("cudaError_t", "cudaMemcpyKind")
CUDA_RUNTIME_KEEP_CLASSES = ("cudaDeviceProp",)


def cuda_python_table(label, module_path, functions, enums, classes, source):
    table = {"binding": "cuda-python", "version": label, "module": module_path, "source": source,
             "functions": {k: v for k, v in sorted(functions.items())},
             "enums": {k: v for k, v in sorted(enums.items()) if k in CUDA_RUNTIME_KEEP_ENUMS},
             "classes": {k: v for k, v in sorted(classes.items()) if k in CUDA_RUNTIME_KEEP_CLASSES}}
    table["counts"] = {"functions": len(functions), "enums": len(enums),
                       "returns_known": sum(1 for f in functions.values() if f["returns"] is not None)}
    return table


def extract_cuda_python(wheels_dir):
    written = []
    for pattern, label, member, module_path in (
            ("cuda_python-12.4.0-*.whl", "12.4", "cuda/cudart.pyx", "cuda.cudart"),
            ("cuda_bindings-12.9.*.whl", "12.9", "cuda/bindings/runtime.pyx", "cuda.bindings.runtime")):
        candidates = sorted(glob.glob(os.path.join(wheels_dir, pattern)))
        if not candidates:
            continue
        with zipfile.ZipFile(candidates[-1]) as wheel:
            text = wheel.read(member).decode("utf-8")
        functions, enums, classes = cuda_python_from_pyx(text)
        written.append(write_table("cuda-python-%s.json" % label, cuda_python_table(
            label, module_path, functions, enums, classes,
            {"package": os.path.basename(candidates[-1]), "file": member})))
    try:
        from cuda.bindings import runtime  # the installed cuda-bindings (13.x here)
        import cuda.bindings
    except ImportError:
        return written
    version = getattr(cuda.bindings, "__version__", "13")
    label = ".".join(version.split(".")[:2])
    functions, enums, classes = cuda_python_live(runtime)
    written.append(write_table("cuda-python-%s.json" % label, cuda_python_table(
        label, "cuda.bindings.runtime", functions, enums, classes,
        {"package": "cuda-bindings %s (installed; read through inspect)" % version, "file": "cuda/bindings/runtime"})))
    return written


PYCUDA_REFS = {"2022.1": "v2022.1", "2026.1": "v2026.1"}


CPP_DEFINITION = re.compile(r"[\s*&>](\w+)\s*\(([^()]*)\)\s*(?:const\s*)?(?:\{|;)")


def cpp_arities(text):
    """name -> parameter counts of every function definition or declaration `name(params) {` / `;` in C++ text."""
    found = {}
    for match in CPP_DEFINITION.finditer(text):
        params = match.group(2).strip()
        if re.search(r"[\"'=]|\b(?:return|new|delete)\b", params) and "=" not in params.split(",")[-1]:
            continue  # a call or an expression, not a parameter list
        found.setdefault(match.group(1), set()).add(0 if params in ("", "void") else len(split_top(params)))
    return found


def class_arities(text):
    """(class, method) -> parameter counts inside each `class X {...}` of C++ text."""
    found = {}
    for match in re.finditer(r"\bclass\s+(\w+)\s*(?::[^{;]*)?\{", text):
        try:
            body = text[match.end() - 1:matching(text, match.end() - 1) + 1]
        except ValueError:
            continue
        for name, counts in cpp_arities(body).items():
            found.setdefault((match.group(1), name), set()).update(counts)
    return found


def boost_python_table(wrap_text, driver_py, header_text=""):
    """pycuda.driver: module functions and classes (Boost.Python py::def / py::class_ chains; DEF_SIMPLE_* macros
    expanded) plus what driver.py adds in Python. Arity comes from the argument names where the wrapper gives them,
    else from the C++ function (wrap_cudadrv.cpp) or method (cuda.hpp) it binds, where all its overloads agree."""
    text = strip_comments(wrap_text)
    free_arities = cpp_arities(text)
    method_arities = class_arities(strip_comments(header_text))
    text = re.sub(r"\.DEF_SIMPLE_METHOD\s*\((\w+)\)", r'.def("\1", &cl::\1)', text)
    text = re.sub(r"\.DEF_SIMPLE_METHOD_WITH_ARGS\s*\((\w+)\s*,", r'.def("\1", &cl::\1,', text)
    text = re.sub(r"\bDEF_SIMPLE_FUNCTION\s*\((\w+)\)", r'py::def("\1", \1)', text)
    text = re.sub(r"\bDEF_SIMPLE_FUNCTION_WITH_ARGS\s*\((\w+)\s*,", r'py::def("\1", \1,', text)
    functions, classes = {}, {}

    def unique(counts):
        return counts.pop() if counts and len(counts) == 1 else None

    def bound_arity(token, method, cls):
        """Arity of the C++ callable a wrapper binds: &cl::name (a method of cls) or a free function (self first
        for a method)."""
        token = token.strip()
        pointer = re.match(r"^&(?:\w+::)*cl::(\w+)$", token)
        if pointer:
            return unique(set(method_arities.get((cls, pointer.group(1)), set())))
        if re.match(r"^\w+$", token):
            arity = unique(set(free_arities.get(token, set())))
            return None if arity is None else arity - (1 if method else 0)
        return None

    def entry(args, method, bound=None, cls=None):
        keywords = []
        for arg in args:
            for kw in re.finditer(r"py::args?\s*\(([^()]*)\)(\s*=\s*[^,)]+(?:\(\))?)?", arg):
                names = [string_value(n) for n in split_top(kw.group(1))]
                keywords.extend((n, bool(kw.group(2))) for n in names if n)
        if method and keywords and keywords[0][0] == "self":
            keywords = keywords[1:]
        result = {"arity": len(keywords) if keywords else (bound_arity(bound, method, cls) if bound else None)}
        if keywords:
            result["args"] = [n for n, _ in keywords]
            optional = [n for n, has_default in keywords if has_default]
            if optional:
                result["optional"] = optional
        return result

    for match in re.finditer(r"(?<![\w.])py::def\s*\(", text):
        args = split_top(text[match.end():matching(text, match.end() - 1)])
        if args and string_value(args[0]):
            functions[string_value(args[0])] = entry(args[2:], False, args[1] if len(args) > 1 else None)
    for match in re.finditer(r"py::class_\s*<", text):
        gt = matching_angle(text, match.end() - 1)
        paren = re.match(r"\s*(?:\w+\s*)?\(", text[gt + 1:gt + 200])
        if not paren:
            continue
        open_at = gt + paren.end()
        close = matching(text, open_at)
        args = split_top(text[open_at + 1:close])
        name = string_value(args[0]) if args else None
        if not name:
            continue
        members = classes.setdefault(name, {})
        typedefs = re.findall(r"typedef\s+(\w+)\s+cl\s*;", text[:match.start()])
        cls = typedefs[-1] if typedefs else None
        if len(args) > 1 and args[1].startswith("py::init"):
            members["__init__"] = dict(entry(args[1:], False), kind="method")
        for method, margs in parse_chain(text, close + 1):
            label = string_value(margs[0]) if margs else None
            if method == "def" and label:
                members[label] = dict(entry(margs[2:], True, margs[1] if len(margs) > 1 else None, cls),
                                      kind="method")
            elif method == "staticmethod" and label in members:
                members[label]["kind"] = "staticmethod"
            elif method in ("add_property", "def_readonly", "def_readwrite") and label:
                members[label] = {"kind": "property", "writable": method == "def_readwrite"}
            elif method == "def" and margs and margs[0].startswith("py::init"):
                members["__init__"] = dict(entry(margs[1:], False), kind="method")
    tree = ast.parse(driver_py)
    python_functions = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            python_functions.add(node.name)
            for inner in ast.walk(node):
                if isinstance(inner, ast.Assign):
                    for target in inner.targets:
                        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and \
                                target.value.id in classes:
                            classes[target.value.id].setdefault(target.attr, {"kind": "method", "arity": None})
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    python_functions.add(target.id)
    return functions, classes, sorted(python_functions)


def extract_pycuda(git_dir):
    written = []
    for version, ref in PYCUDA_REFS.items():
        wrap = subprocess.run(["git", "--git-dir", git_dir, "show", "%s:src/wrapper/wrap_cudadrv.cpp" % ref],
                              capture_output=True, text=True, check=True).stdout
        driver = subprocess.run(["git", "--git-dir", git_dir, "show", "%s:pycuda/driver.py" % ref],
                                capture_output=True, text=True, check=True).stdout
        header = subprocess.run(["git", "--git-dir", git_dir, "show", "%s:src/cpp/cuda.hpp" % ref],
                                capture_output=True, text=True, check=True).stdout
        functions, classes, python_functions = boost_python_table(wrap, driver, header)
        table = {"binding": "pycuda", "version": version, "module": "pycuda.driver",
                 "source": {"repository": "https://github.com/inducer/pycuda", "ref": ref,
                            "commit": commit_of(git_dir, ref),
                            "files": ["src/wrapper/wrap_cudadrv.cpp", "src/cpp/cuda.hpp", "pycuda/driver.py"]},
                 "functions": functions, "classes": classes, "python": python_functions}
        table["counts"] = {"functions": len(functions) + len(python_functions), "classes": len(classes),
                           "members": sum(len(c) for c in classes.values())}
        written.append(write_table("pycuda-%s.json" % version, table))
    return written


ORT_OPTION = re.compile(rb"(?<![A-Za-z0-9_])(trt_[a-z0-9_]+|device_id|user_compute_stream|has_user_compute_stream)"
                        rb"(?![A-Za-z0-9_])")
ORT_PROVIDERS = (b"CUDAExecutionProvider", b"TensorrtExecutionProvider")


def extract_onnxruntime(wheels_dir):
    """TensorRT execution-provider option names per onnxruntime-gpu release: the option-name strings of its
    TensorRT provider library and Python binding module (the names the provider parses). The runners pass no CUDA
    provider options; the provider names themselves are recorded."""
    releases, wheels = {}, []
    for path in sorted(glob.glob(os.path.join(wheels_dir, "onnxruntime_gpu-*.whl"))):
        release = os.path.basename(path).split("-")[1]
        with zipfile.ZipFile(path) as wheel:
            data = b"\0".join(wheel.read(n) for n in wheel.namelist()
                               if n.endswith(".so") and ("providers_tensorrt" in n or "pybind11_state" in n))
        # Strings packed without separators read as one run: keep single names only.
        names = set(m.decode() for m in ORT_OPTION.findall(data))
        names = [n for n in names if n.count("trt_") <= 1 and len(n) <= 48]
        releases[release] = {"TensorrtExecutionProvider": sorted(names),
                             "providers": sorted(p.decode() for p in ORT_PROVIDERS if p in data)}
        wheels.append(os.path.basename(path))
    if not releases:
        return []
    table = {"releases": releases, "source": {"packages": wheels, "files": [
        "onnxruntime/capi/libonnxruntime_providers_tensorrt.so", "onnxruntime/capi/onnxruntime_pybind11_state*.so"]},
        "counts": {r: len(v["TensorrtExecutionProvider"]) for r, v in releases.items()}}
    return [write_table("onnxruntime-ep-options.json", table)]


def write_table(name, table):
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name)
    write_text_atomically(path, json.dumps(table, sort_keys=True, separators=(",", ":")) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensorrt-git")
    parser.add_argument("--pycuda-git")
    parser.add_argument("--wheels", help="folder of tensorrt*-bindings wheels")
    parser.add_argument("--cuda-python-wheels", help="folder of cuda-python / cuda-bindings wheels")
    parser.add_argument("--onnxruntime-wheels", help="folder of onnxruntime-gpu wheels, one per release")
    parser.add_argument("--work", default="/tmp/extract_trt_api")
    args = parser.parse_args(argv)
    try:
        written = extract(args)
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        print("extract_trt_api: %s failed: %s" % (" ".join(exc.cmd[:4]), (stderr.strip().splitlines() or ["?"])[0]),
              file=sys.stderr)
        return 2
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        print("extract_trt_api: %s" % (str(exc).splitlines() or [type(exc).__name__])[0], file=sys.stderr)
        return 2
    for path in written:
        table = json.load(open(path))
        print("%-28s %s" % (os.path.basename(path), json.dumps(table.get("counts"))))
    return 0


def extract(args):
    """Every table the arguments ask for; returns the paths written."""
    for folder in (args.tensorrt_git, args.pycuda_git, args.wheels, args.cuda_python_wheels, args.onnxruntime_wheels):
        if folder and not os.path.isdir(folder):
            raise OSError("no such folder: %s" % folder)
    written = []
    if args.tensorrt_git:
        written += extract_tensorrt(args.tensorrt_git, args.wheels, args.work)
    if args.pycuda_git:
        written += extract_pycuda(args.pycuda_git)
    if args.cuda_python_wheels:
        written += extract_cuda_python(args.cuda_python_wheels)
    if args.onnxruntime_wheels:
        written += extract_onnxruntime(args.onnxruntime_wheels)
    return written


if __name__ == "__main__":
    sys.exit(main())

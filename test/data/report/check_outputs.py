#!/usr/bin/env python3
"""Checks the report writers' expected files beside the unit test: every *.json here must
validate against schema.json (JSON Schema draft-07; a small stdlib validator for the
keywords the schema uses, plus the jsonschema package when installed), and every *.prom
must pass `promtool check metrics`. Exit 77 (skip) only when promtool is missing.
Usage: check_outputs.py [DIR]"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

TYPES = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}


def type_ok(v, t):
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, TYPES[t])


def validate(v, s, root, path="$"):
    """Returns a list of error strings."""
    if "$ref" in s:
        node = root
        for part in s["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return validate(v, node, root, path)
    errs = []
    if "type" in s:
        ts = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(type_ok(v, t) for t in ts):
            return ["%s: %r is not %s" % (path, v, ts)]
    if "const" in s and v != s["const"]:
        errs.append("%s: %r != %r" % (path, v, s["const"]))
    if "enum" in s and v not in s["enum"]:
        errs.append("%s: %r not in %r" % (path, v, s["enum"]))
    if "oneOf" in s:
        n = sum(1 for sub in s["oneOf"] if not validate(v, sub, root, path))
        if n != 1:
            errs.append("%s: matches %d of oneOf" % (path, n))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errs.append("%s: %r < %r" % (path, v, s["minimum"]))
        if "maximum" in s and v > s["maximum"]:
            errs.append("%s: %r > %r" % (path, v, s["maximum"]))
    if isinstance(v, str) and "pattern" in s and not re.search(s["pattern"], v):
        errs.append("%s: %r does not match %s" % (path, v, s["pattern"]))
    if isinstance(v, dict):
        for k in s.get("required", []):
            if k not in v:
                errs.append("%s: missing %s" % (path, k))
        props = s.get("properties", {})
        for k, sub in v.items():
            if k in props:
                errs += validate(sub, props[k], root, path + "." + k)
            elif s.get("additionalProperties") is False:
                errs.append("%s: unexpected %s" % (path, k))
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            errs.append("%s: fewer than %d items" % (path, s["minItems"]))
        if "maxItems" in s and len(v) > s["maxItems"]:
            errs.append("%s: more than %d items" % (path, s["maxItems"]))
        if "items" in s:
            for i, item in enumerate(v):
                errs += validate(item, s["items"], root, "%s[%d]" % (path, i))
    return errs


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(d, "schema.json")) as f:
        schema = json.load(f)
    failed = False
    docs = sorted(p for p in glob.glob(os.path.join(d, "*.json")) if not p.endswith("schema.json"))
    for p in docs:
        with open(p) as f:
            doc = json.load(f)
        errs = validate(doc, schema, schema)
        try:
            import jsonschema  # optional: the full draft-07 implementation
            errs += [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        except ImportError:
            pass
        print("%s: %s" % (os.path.basename(p), "valid" if not errs else "INVALID"))
        for e in errs:
            print("  " + e)
        failed |= bool(errs)
    # The validator itself must reject a broken document.
    if not validate({"schema_version": 3}, schema, schema):
        print("validator accepted a bad document")
        failed = True

    promtool = shutil.which("promtool")
    if not promtool:
        print("promtool not found: install package prometheus")
        return 1 if failed else 77
    for p in sorted(glob.glob(os.path.join(d, "*.prom"))):
        with open(p, "rb") as f:
            r = subprocess.run([promtool, "check", "metrics"], stdin=f, capture_output=True,
                               timeout=60)
        ok = r.returncode == 0
        print("%s: promtool %s" % (os.path.basename(p), "ok" if ok else "FAILED"))
        if not ok:
            sys.stdout.write((r.stdout + r.stderr).decode(errors="replace"))
        failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

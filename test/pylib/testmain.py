"""The one `unittest.main` of every Python suite: skips must not count as passes.

    if __name__ == "__main__":
        testmain.main()

Runs the file's tests like `unittest.main(verbosity=2)`, then:
  - every test failed or errored: exit 1 (as unittest does);
  - every test of the file was skipped: exit 77, which meson reports as SKIP;
  - some tests were skipped: exit 0, after one machine-readable line on stdout
        SKIPPED-TESTS: N name: reason; name: reason
    that test/run-suites adds to its closing line (meson only sees the exit status).
A suite that is not a unittest file (check_outputs.py) prints the same line itself
through skipped_line(). Stdlib only.
"""
import sys
import unittest

SKIP_EXIT = 77


def skipped_line(skips):
    """The SKIPPED-TESTS line for [(name, reason), ...]; one line, no newline inside."""
    parts = ["%s: %s" % (name, " ".join(str(reason).split())) for name, reason in skips]
    return "SKIPPED-TESTS: %d %s" % (len(skips), "; ".join(parts))


def main(verbosity=2):
    prog = unittest.main(verbosity=verbosity, exit=False)
    r = prog.result
    skips = [(t.id().split(".", 1)[-1], reason) for t, reason in r.skipped]
    sys.stderr.flush()
    if skips:
        print(skipped_line(skips), flush=True)
    if not r.wasSuccessful():
        sys.exit(1)
    if r.testsRun == 0:
        print("no tests ran", flush=True)
        sys.exit(1)
    if len(skips) == r.testsRun:
        sys.exit(SKIP_EXIT)
    sys.exit(0)

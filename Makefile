# Thin wrapper around meson. `make run` and `make test` install what is missing first
# (`make deps`, `make test-deps`); `make`, `make install` and `make deb` never run apt-get
# or create users.
BUILD    ?= build
MESON_EXTRA ?=
PREFIX   ?= /usr/local
CONF     ?= postfix-snippets/postsurge.cf
BENCH_ARGS ?=
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 1800

.PHONY: all deps test-deps setup run test unit asan valgrind fuzz bench bench-stores soak flood format format-check install uninstall deb test-package man clean

all: setup
	ninja -C $(BUILD)

deps:
	@sh .ci/install-deps build

test-deps:
	@sh .ci/install-deps test

setup:
	@test -f $(BUILD)/build.ninja || meson setup $(BUILD) --prefix=$(PREFIX) $(MESON_EXTRA)

run: deps all
	$(BUILD)/policyd/postsurge -f -c $(CONF) serve

test: test-deps setup
	ninja -C $(BUILD)
	sh test/run-suites $(BUILD)

unit: test-deps setup
	ninja -C $(BUILD) && meson test -C $(BUILD) --suite unit --suite fuzz-smoke --print-errorlogs

asan: test-deps
	@test -f build-asan/build.ninja || meson setup build-asan -Db_sanitize=address,undefined \
	    -Dc_args=-fno-sanitize-recover=all -Db_lundef=false $(MESON_EXTRA)
	ninja -C build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    meson test -C build-asan --suite unit --suite fuzz-smoke --suite integration --print-errorlogs

# memcheck, zero errors and zero definite/indirect leaks: the compiled unit and fuzz-smoke
# programs (the setup's exe_wrapper; Python and sh checkers in those suites are not C and
# are left out), then the integration suite with the daemon and CLI under memcheck.
valgrind: test-deps setup
	ninja -C $(BUILD)
	meson test -C $(BUILD) --setup valgrind --print-errorlogs $$(meson introspect --tests \
	    $(BUILD) | python3 -c 'import json, os, sys; b = os.path.abspath("$(BUILD)") + "/"; \
	    print(" ".join(t["name"] for t in json.load(sys.stdin) if t["cmd"][0].startswith(b) \
	    and {s.split(":")[-1] for s in t["suite"]} & {"unit", "fuzz-smoke"}))')
	meson test -C $(BUILD) --setup valgrinddaemon --suite integration --print-errorlogs

fuzz:
	@sh .ci/install-deps fuzz
	@test -f build-fuzz/build.ninja || CC=clang meson setup build-fuzz -Dfuzz=true \
	    -Db_sanitize=address,undefined -Db_lundef=false -Dtests=true
	ninja -C build-fuzz
	sh test/fuzz/run-all build-fuzz $(FUZZ_SECONDS)

bench: all
	@sh .ci/install-deps bench
	ninja -C $(BUILD)
	sh test/bench/run $(BUILD) $(BENCH_ARGS)

bench-stores: all
	python3 test/bench/stores $(BUILD)

# Mixed load for SOAK_SECONDS (default 30 minutes) on a Redis store with a Redis restart;
# the last line says PASS or FAIL (0 unanswered, memory growth under 5 % after warm-up).
soak: all
	@sh .ci/install-deps bench
	SOAK_SECONDS=$(SOAK_SECONDS) python3 test/bench/soak $(BUILD)

# A flood of 1,000,000 distinct client addresses against the memory store's bound.
flood: all
	python3 test/bench/flood $(BUILD)

format:
	clang-format -i lib/*.[ch] policyd/*.[ch] policyd/*/*.[ch] test/unit/*.[ch] test/fuzz/*.c test/bench/*.c test/integration/*.c

format-check:
	clang-format --dry-run --Werror lib/*.[ch] policyd/*.[ch] policyd/*/*.[ch] test/unit/*.[ch] test/fuzz/*.c test/bench/*.c test/integration/*.c

# `make install [PREFIX=/usr] [DESTDIR=/tmp/stage]`: files go to $(DESTDIR)$(PREFIX)/...,
# the systemd units to $(PREFIX)/lib/systemd/system (systemd reads /usr/local/lib/... too).
# meson fixes the prefix at setup, so an existing build directory is reconfigured when
# PREFIX differs. It creates no user and no /etc file: `make deps` (as root) creates the
# `postsurge` user; copy the example to /etc/postsurge/postsurge.cf yourself (or use
# the package, `make deb`). `make uninstall` removes what install put.
install: setup
	@cur=$$(meson introspect --buildoptions $(BUILD) | python3 -c \
	    'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])'); \
	if [ "$$cur" != "$(PREFIX)" ]; then \
	    echo "postsurge: prefix $$cur -> $(PREFIX)"; meson configure $(BUILD) -Dprefix=$(PREFIX); fi
	ninja -C $(BUILD)
	meson install -C $(BUILD) --no-rebuild $(if $(DESTDIR),--destdir $(abspath $(DESTDIR)))

uninstall:
	@test -f $(BUILD)/meson-logs/install-log.txt || { echo "postsurge: nothing installed from $(BUILD)"; exit 1; }
	ninja -C $(BUILD) uninstall

# The Debian package, built from the source files (with uncommitted edits) in a copy
# under $(BUILD)/deb, so nothing is written beside the source tree; the .deb lands there.
DEB_DIR = $(BUILD)/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(DEB_DIR)/src
	cd $(DEB_DIR)/src && dpkg-buildpackage -us -uc -b
	lintian --fail-on error $(DEB_DIR)/postsurge_*.deb
	@ls $(DEB_DIR)/*.deb

# Installs the package on this machine, checks it and purges it (test/package/run).
test-package: deb
	sh test/package/run $(DEB_DIR)

# Rewrites the generated SETTINGS list of postsurge.cf(5) from lib/config.c's table.
man: all
	$(BUILD)/policyd/postsurge config --reference=man > $(BUILD)/settings.man
	awk -v gen=$(BUILD)/settings.man \
	    '/^\.\\" end generated/ { skip = 0 } !skip { print } \
	     /^\.\\" begin generated/ { while ((getline l < gen) > 0) print l; skip = 1 }' \
	    policyd/postsurge.cf.5 > $(BUILD)/postsurge.cf.5.new
	mv $(BUILD)/postsurge.cf.5.new policyd/postsurge.cf.5

clean:
	rm -rf $(BUILD) build-asan build-fuzz

# Thin wrapper around meson. `make run` and `make test` install what is missing first.
BUILD    ?= build
MESON_EXTRA ?=
PREFIX   ?= /usr/local
CONF     ?= postfix-snippets/postsurge.cf
BENCH_ARGS ?=
FUZZ_SECONDS ?= 60

.PHONY: all deps test-deps setup run test unit asan valgrind fuzz bench soak format format-check install clean

all: setup
	ninja -C $(BUILD)

deps:
	@sh .ci/install-deps build

test-deps:
	@sh .ci/install-deps test

setup: deps
	@test -f $(BUILD)/build.ninja || meson setup $(BUILD) --prefix=$(PREFIX) $(MESON_EXTRA)

run: all
	$(BUILD)/policyd/postsurge -f -c $(CONF) serve

test: test-deps setup
	ninja -C $(BUILD)
	sh test/run-suites $(BUILD)

unit: setup
	ninja -C $(BUILD) && meson test -C $(BUILD) --suite unit --suite fuzz-smoke --print-errorlogs

asan: test-deps
	@test -f build-asan/build.ninja || meson setup build-asan -Db_sanitize=address,undefined \
	    -Dc_args=-fno-sanitize-recover=all -Db_lundef=false $(MESON_EXTRA)
	ninja -C build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    meson test -C build-asan --suite unit --suite fuzz-smoke --suite integration --print-errorlogs

valgrind: test-deps setup
	ninja -C $(BUILD)
	meson test -C $(BUILD) --setup valgrind --suite unit --suite fuzz-smoke --print-errorlogs

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

format:
	clang-format -i lib/*.[ch] policyd/*.[ch] test/unit/*.c test/fuzz/*.c test/bench/*.c

format-check:
	clang-format --dry-run --Werror lib/*.[ch] policyd/*.[ch] test/unit/*.c test/fuzz/*.c test/bench/*.c

install: all
	meson install -C $(BUILD) $(if $(DESTDIR),--destdir $(DESTDIR))

clean:
	rm -rf $(BUILD) build-asan build-fuzz

# sessionizer - convenience targets over CMake/CTest.
#   make          build build/sessionizer (installs missing Debian packages first)
#   make test     every test: the normal build, then ASan+UBSan, then bounded fuzzing
#   make demo     the reference walkthrough's visits into SQLite, table printed
#   make bench    the benchmark suite (bench/run)
#   make install  PREFIX=/usr/local DESTDIR= : binary, man page, systemd unit,
#                 example configuration (the same as cmake --install)
#   make deb      the Debian package (dpkg-buildpackage -us -uc -b), in ../

MAKEFLAGS  += --no-print-directory
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= 2
PREFIX     ?= /usr/local
DESTDIR    ?=
CTEST_ARGS ?=

.PHONY: all deps build test test-fast test-asan fuzz demo bench install deb clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) $(CTEST_ARGS)

test-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DSANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j$(JOBS) -LE slow $(CTEST_ARGS)

fuzz: deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_COMPILER=clang -DFUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS)
	tests/fuzz/run-all.sh $(FUZZ_BUILD) 20 $(JOBS)

test: test-fast test-asan fuzz

demo: build
	@rm -rf demo && mkdir -p demo
	$(BUILD)/sessionizer run --source file:samples/visits.jsonl --sink sqlite:demo/sessions.db \
	  --checkpoint demo/checkpoint --dlq jsonl:demo/deadletter.jsonl --until-end
	@echo
	@sqlite3 -header -column demo/sessions.db \
	  "SELECT session_id, user_id, pages, ingestion_time FROM sessions ORDER BY user_id, pages"

install: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)
	DESTDIR=$(DESTDIR) cmake --install $(BUILD)

deb: deps
	dpkg-buildpackage -us -uc -b

bench: deps
	bench/run

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD) demo

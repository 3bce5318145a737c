# Two commands for a new user: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
RUNTIME_STAMP := $(VENV)/.installed-runtime
DELAY_STAMP := $(VENV)/.installed-delay
# Debian packages the tests use: dnsmasq (DNS), nft/iptables (partitions, NFQUEUE),
# avahi (mDNS interop), iproute2/util-linux (namespaces), chromium (the admin page and
# the chat example's browser test),
# libnetfilter-queue-dev and gcc (to build netfilterqueue, the chaos suite's delay
# faults: no netem in this kernel).
APT_PKGS := dnsmasq-base nftables iptables avahi-daemon avahi-utils iproute2 util-linux dbus chromium \
            libnetfilter-queue-dev gcc
# The benchmarks also use redis-server (the pub/sub baseline).
PYTEST_ARGS ?=
# make chaos SEED=7 DURATION=300 [CHAOS_ARGS="--kinds silent_restart,stop --no-strict"]
SEED ?= 1
DURATION ?= 120
CHAOS_ARGS ?=

.PHONY: demo test chaos lint typecheck bench bench-scale fuzz system-deps venv clean

venv: $(STAMP)

# the demo needs only the library; the tests also need pytest, trustme, ruff, mypy...
$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	@missing=""; \
	for c in dnsmasq:dnsmasq-base nft:nftables iptables:iptables avahi-daemon:avahi-daemon avahi-browse:avahi-utils ip:iproute2 unshare:util-linux dbus-daemon:dbus chromium:chromium gcc:gcc $(EXTRA_DEPS); do \
	  command -v $${c%%:*} >/dev/null 2>&1 || missing="$$missing $${c#*:}"; \
	done; \
	test -e /usr/include/libnetfilter_queue/libnetfilter_queue.h || missing="$$missing libnetfilter-queue-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "not root: tests that need$$missing will be skipped"; \
	  fi; \
	fi

# netfilterqueue compiles against libnetfilter-queue-dev (system-deps): a separate
# extra, so that a machine without it still gets the rest; the chaos suite then skips
# delay faults and says why.
$(DELAY_STAMP): $(STAMP) | system-deps
	@if $(BIN)/python -m pip install -q -e '.[delay]'; then touch $(DELAY_STAMP); \
	else echo "netfilterqueue did not install: the chaos suite will skip delay faults"; fi

demo: $(RUNTIME_STAMP)
	$(BIN)/peerlink demo --nodes 5

lint: venv
	$(BIN)/ruff check peerlink tests bench examples fuzz

typecheck: venv
	$(BIN)/mypy

# The suite runs in a fresh network namespace with only loopback up: no test
# traffic can leave the machine, and tests may create namespaces of their own.
test: venv system-deps $(DELAY_STAMP) lint typecheck
	@if [ "$$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then \
	  unshare --net -- sh -c 'ip link set lo up && exec $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)'; \
	else \
	  echo "not root or no unshare: namespace tests will skip"; \
	  $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); \
	fi

# A longer seeded chaos run (tests/support/chaosrun.py): prints the schedule, the
# figures and every invariant violation with its events; exits 1 on a violation.
chaos: venv system-deps $(DELAY_STAMP)
	@if [ "$$(id -u)" != 0 ] || ! unshare --net true 2>/dev/null; then \
	  echo "make chaos needs root and unshare (network namespaces)"; exit 2; fi
	unshare --net -- sh -c 'ip link set lo up && cd tests && exec ../$(BIN)/python -m support.chaosrun --seed $(SEED) --duration $(DURATION) $(CHAOS_ARGS)'

bench: venv
	$(MAKE) system-deps EXTRA_DEPS=redis-server:redis-server
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench

# N = 10, 30, 100 node processes on this machine (several minutes; loads every core)
bench-scale: venv
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench scale

# Coverage-guided fuzzing of the sans-I/O core (atheris/libFuzzer), FUZZ_SECONDS per
# target. The corpus is kept in the repo (fuzz/corpus/TARGET/, seeded by fuzz/seed.py):
# libFuzzer adds the inputs that reach new coverage there (and replaces ones it
# shortened). Crashes are saved in fuzz/crashes/TARGET/; triage them into
# fuzz/regressions/TARGET/<what it found>, which tests/test_fuzz_regressions.py replays.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decoder_preauth decoder_auth handshake tamper
fuzz: venv
	$(BIN)/python -m pip install -q -e '.[fuzz]'
	$(BIN)/python fuzz/seed.py
	@status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/crashes/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  $(BIN)/python fuzz/run.py $$t fuzz/corpus/$$t -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=10 -rss_limit_mb=2048 -artifact_prefix=fuzz/crashes/$$t/ -print_final_stats=1 \
	    || { status=1; echo "!! $$t crashed: see fuzz/crashes/$$t/"; }; \
	done; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

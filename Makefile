# flicker build.  `make` builds build/flicker (normal), `make SAN=1` builds
# build/asan/flicker with AddressSanitizer + UndefinedBehaviorSanitizer.
# Every .c under src/<role>/ is part of libflicker; src/main.c is the entry point.
# tests/unit/test_*.c each become one test binary linked against libflicker.

CC      ?= cc
PKGS    := libevent libevent_pthreads jansson sqlite3 libcrypto libzip libseccomp libcurl
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wformat=2 \
           -fno-strict-aliasing -D_GNU_SOURCE -Isrc $(shell pkg-config --cflags $(PKGS))
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lpthread -lm

ifeq ($(SAN),1)
BUILD   ?= build/asan
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1
LDFLAGS += -fsanitize=address,undefined
else
BUILD   ?= build
endif

LIB_SRC   := $(sort $(wildcard src/*/*.c))
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC  := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
INIT_BIN  := $(BUILD)/flicker-init
BENCH_BIN := $(BUILD)/bench/asg_bench
AGENT_BIN := $(BUILD)/flicker-agent

.PHONY: all clean test unit bench bench-leader bench-microvm fuzz guest chaos
all: $(BUILD)/flicker $(UNIT_BIN) $(INIT_BIN) $(AGENT_BIN) $(BENCH_BIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libflicker.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# --whole-archive: every role is linked in, so a role's real main overrides
# the weak "not built" default in src/platform/serve.c.
$(BUILD)/flicker: $(BUILD)/obj/src/main.o $(BUILD)/libflicker.a
	$(CC) $(LDFLAGS) -o $@ $(BUILD)/obj/src/main.o -Wl,--whole-archive $(BUILD)/libflicker.a \
	  -Wl,--no-whole-archive $(LDLIBS)

# The in-sandbox init is static and sanitizer-free: it runs inside the jail
# before the runtime and must not depend on the host's dynamic loader paths.
$(INIT_BIN): init/flicker-init.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -Werror -static -o $@ $<

# The microVM guest agent (PID 1 inside a VM): static and sanitizer-free
# like flicker-init; it shares the frame codec with the worker.
$(AGENT_BIN): guest/flicker-agent.c src/worker/vmproto.c src/worker/vmproto.h
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -Werror -Wshadow -Wformat=2 -static -Isrc -o $@ \
	  guest/flicker-agent.c src/worker/vmproto.c

# The microVM guest: kernel and root images, built once and cached outside
# the tree (FLICKER_CACHE_DIR, default /var/cache/flicker), linked into
# $(BUILD)/guest/ where the microvm backend looks for them (docs/guest.md).
guest: $(AGENT_BIN)
	scripts/guest-kernel.sh $(BUILD)/guest/vmlinux
	scripts/guest-rootfs.sh $(AGENT_BIN) $(BUILD)/guest

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libflicker.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(BUILD)/libflicker.a $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libflicker.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libflicker.a $(LDLIBS)

unit: all
	@scripts/unit.sh $(BUILD)

test:
	scripts/test.sh

bench: all
	/usr/bin/python3 bench/run.py --build $(BUILD)
	/usr/bin/python3 bench/leader.py --build $(BUILD)
	$(MAKE) bench-failover
	$(MAKE) bench-microvm

# Failover time over 20 kills of the assignment leader: `flicker up` (file
# journal), then the etcd journal (3-member cluster on loopback).
bench-failover: all
	/usr/bin/python3 bench/failover.py --build $(BUILD) --kills 20
	ASG_FAILOVER_RUNS=20 CHECK_ONLY=test_failover $(BUILD)/tests/test_asg_service | grep '^# '

bench-leader: all
	/usr/bin/python3 bench/leader.py --build $(BUILD)

# Cold start by full boot + Init vs restore from a snapshot (provided and
# Python, same run), microVM starts per second, host memory per microVM.
bench-microvm: all guest
	FLICKER_VM_BENCH=5 CHECK_ONLY=test_vm_bench $(BUILD)/tests/test_microvm

# The chaos suite (chaos/run.py, docs/chaos.md): each fault on a fresh
# platform under load; several minutes; needs root (sandboxes, network
# namespaces, a loop-mounted disk).  Writes the results into docs/chaos.md.
# CHAOS_ARGS="--only worker,frontend" or "--smoke" narrows or shortens it.
chaos: all
	/usr/bin/python3 chaos/run.py --build $(BUILD) --write-doc $(CHAOS_ARGS)

# libFuzzer targets: fuzz/fuzz_*.c, each linked with the library sources
# built by clang with ASan+UBSan; `make fuzz` builds them and runs each for
# FUZZ_SECONDS (default 20) from its corpus directory.
FUZZ_SRC     := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BIN     := $(FUZZ_SRC:fuzz/%.c=build/fuzz/%)
FUZZ_SECONDS ?= 20
build/fuzz/%: fuzz/%.c $(LIB_SRC)
	@mkdir -p $(dir $@)
	clang -std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -fsanitize=fuzzer,address,undefined \
	  $(shell pkg-config --cflags $(PKGS)) -o $@ $< $(LIB_SRC) $(LDLIBS)
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p build/fuzz/corpus/$$n; \
	  echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/corpus/$$n \
	    $$( [ -d fuzz/corpus/$$n ] && echo fuzz/corpus/$$n ) || exit 1; done

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

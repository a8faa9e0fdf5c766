# bnorm: `make` builds everything into build/; `make demo`, `make test`, `make install PREFIX=...`.
CC      ?= cc
PYTHON  ?= /usr/bin/python3
PREFIX  ?= /usr/local
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
OPENMP  ?= -fopenmp
.DEFAULT_GOAL := all
WARN    := -std=c11 -Wall -Wextra -Werror -pedantic
# Never fuse a * b + c: results must be the same bits on every machine (and no -ffast-math)
EXACT   := -ffp-contract=off
ALL_CFLAGS := $(WARN) $(EXACT) $(CFLAGS) $(OPENMP) $(EXTRA_DEFS) -fPIC -Iinclude
LDLIBS  := $(OPENMP) -lm

VERSION := $(shell sed -n 's/^\#define BN_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' include/bnorm.h | paste -sd.)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))

# libbnorm (src/): the numerics, needing nothing but libc, libm and OpenMP. libbnorm_io (io/):
# the file formats (.npy, safetensors) and the atomic writer of outputs, an internal library for
# the command, the tests and the fuzzers.
LIB_SRC  := $(filter-out src/kernels_isa.c,$(wildcard src/*.c))
IO_SRC   := $(wildcard io/*.c)
CLI_SRC  := $(filter-out cli/comm_%.c,$(wildcard cli/*.c))
TEST_SRC := $(wildcard tests/c/*.c)
# src/kernels_isa.c is compiled once per instruction set (kernels.c picks one at run time): on
# x86-64 for AVX-512, AVX2 and the baseline, elsewhere (or with BN_NO_CLONES) once, as is.
# -DBN_NO_AVX512 leaves the AVX-512 set out (src/kernels.c).
KERNEL_SETS := $(if $(and $(findstring x86_64,$(shell $(CC) -dumpmachine)),\
                 $(if $(filter -DBN_NO_CLONES,$(CFLAGS) $(EXTRA_DEFS)),,yes)),\
                 $(if $(filter -DBN_NO_AVX512,$(CFLAGS) $(EXTRA_DEFS)),,avx512) avx2 base,base)
KERNEL_OBJ := $(KERNEL_SETS:%=$(BUILD)/src/kernels_%.o)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(KERNEL_OBJ)
IO_OBJ   := $(IO_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
HEADERS  := include/bnorm.h $(wildcard src/*.h) $(wildcard src/*.inc) $(wildcard io/*.h) \
            $(wildcard cli/*.h) $(wildcard tests/c/*.h)
# Each part sees the headers it uses: the library (src/, src/mpi/) its own, the command io/'s,
# the C tests both.
$(BUILD)/src/%.o:       INCLUDES = -Isrc
$(BUILD)/cli/%.o:       INCLUDES = -Iio
$(BUILD)/cli/bench_case.o: INCLUDES = -Iio -Isrc # the bench reports the library's plan
$(BUILD)/tests/c/%.o:   INCLUDES = -Isrc -Iio
$(BUILD)/tests/mpi/%.o: INCLUDES = -Isrc -Itests/c
# The shared libraries export the functions of include/ (marked BN_API) and nothing else: the
# internals, test hooks included, reach the C tests through the static archive.
$(BUILD)/src/%.o:       VISIBILITY = -fvisibility=hidden

# MPI (libbnorm_mpi, its tests, `bnorm fit` across ranks) is built when mpicc is found; mpicc
# drives $(CC) (OMPI_CC / MPICH_CC), so the gcc, clang and sanitizer builds all cover it.
MPICC    ?= mpicc
HAVE_MPI := $(shell command -v $(MPICC) >/dev/null 2>&1 && echo yes)
MPI_CC   := OMPI_CC=$(CC) MPICH_CC=$(CC) $(MPICC)
# as root Open MPI runs only with --allow-run-as-root; 2 cores may host 4 ranks
MPIRUN_FLAGS := --oversubscribe $(if $(filter 0,$(shell id -u)),--allow-run-as-root)
MPI_SRC  := $(wildcard src/mpi/*.c)
MPI_OBJ  := $(MPI_SRC:%.c=$(BUILD)/%.o)
MPI_TEST_OBJ := $(BUILD)/tests/mpi/test_mpi.o $(BUILD)/tests/c/testutil.o
# $(call have_header,NAME): yes when $(CC) finds the header NAME (cjson/cJSON.h), else empty.
# The header is named on the command line (-include), so no '#' passes through make or the shell.
have_header = $(shell $(CC) -E -x c -include $(1) /dev/null >/dev/null 2>&1 && echo yes)
# the command: `bnorm fit` shares its work between MPI ranks when built with MPI; its
# safetensors files need cJSON (libcjson-dev): without it fit and apply say what to install
HAVE_CJSON := $(call have_header,cjson/cJSON.h)
CLI_LD   := $(CC)
CLI_LIBS := $(if $(HAVE_CJSON),-lcjson)
$(BUILD)/io/safetensors.o: EXTRA_CFLAGS = $(if $(HAVE_CJSON),-DBN_HAVE_CJSON)
ifeq ($(HAVE_MPI),yes)
MPI_TARGETS := $(BUILD)/libbnorm_mpi.a $(BUILD)/libbnorm_mpi.so $(BUILD)/test_bnorm_mpi
CLI_OBJ_COMM := $(BUILD)/cli/comm_mpi.o
CLI_LD   := $(MPI_CC)
CLI_LIBS += $(BUILD)/libbnorm_mpi.a
else
CLI_OBJ_COMM := $(BUILD)/cli/comm_single.o
endif
HEADERS  += include/bnorm_mpi.h

# bnorm.torch's ordinary call in C++ (python/bnorm/_torch_native.cpp, a Python extension over
# libtorch) is built when torch's C++ headers, pybind11's and Python's are found (Debian's
# libtorch-dev and pybind11-dev put them in /usr/include, with python3-dev's; TORCH_INCLUDE
# names another place); without
# it bnorm.torch takes the same route through ctypes, at a higher cost per call.
CXX      ?= g++
TORCH_INCLUDE ?= /usr/include
PY_INCLUDE := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
TORCH_INCLUDES := -I$(TORCH_INCLUDE)/torch/csrc/api/include -I$(PY_INCLUDE)
HAVE_TORCH_EXT := $(and $(wildcard $(TORCH_INCLUDE)/torch/extension.h),\
                    $(wildcard $(TORCH_INCLUDE)/pybind11/pybind11.h),$(wildcard $(PY_INCLUDE)/Python.h))
TORCH_EXT := $(if $(HAVE_TORCH_EXT),$(BUILD)/_torch_native.so)

# What the probes found, in a file rewritten only when it changes: the objects and the command
# whose build depends on it are rebuilt once cJSON or MPI arrives (or goes).
CONFIG := cjson=$(if $(HAVE_CJSON),yes,no) mpi=$(if $(HAVE_MPI),yes,no)
$(BUILD)/config: FORCE
	@mkdir -p $(dir $@)
	@test "$$(cat $@ 2>/dev/null)" = "$(CONFIG)" || echo "$(CONFIG)" > $@
$(BUILD)/io/safetensors.o $(BUILD)/bnorm: $(BUILD)/config

# The sources of each library, in a file rewritten only when the list changes: an archive or
# shared library built before a source file moved out of (or into) its directory is rebuilt.
LIB_LIST := $(LIB_SRC) $(KERNEL_SETS) | $(IO_SRC) | $(MPI_SRC)
$(BUILD)/objects: FORCE
	@mkdir -p $(dir $@)
	@test "$$(cat $@ 2>/dev/null)" = "$(LIB_LIST)" || echo "$(LIB_LIST)" > $@

# `make -s probes [HEADER=NAME]`: what the probes found, and have_header's answer for NAME
probes:
	@echo "cjson/cJSON.h: $(if $(HAVE_CJSON),yes,no)"
	@echo "mpicc: $(if $(HAVE_MPI),yes,no)"
	@echo "torch/extension.h: $(if $(HAVE_TORCH_EXT),yes,no)"
	$(if $(HEADER),@echo "$(HEADER): $(if $(call have_header,$(HEADER)),yes,no)")

.PHONY: all demo test test-suites test-c test-python install clean sanitize isa-check tsan valgrind fuzz fuzz-build \
        valgrind-tool valgrind-state valgrind-mpi \
        probes FORCE

all: $(BUILD)/libbnorm.a $(BUILD)/libbnorm.so $(BUILD)/libbnorm_io.a $(BUILD)/bnorm \
     $(BUILD)/test_bnorm $(BUILD)/bench_ab $(MPI_TARGETS) $(TORCH_EXT)

# the C library's functions reach it as addresses from the libbnorm.so bnorm._lib loaded
$(BUILD)/_torch_native.so: python/bnorm/_torch_native.cpp include/bnorm.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -Wall -Wextra -Werror -fPIC -shared -Iinclude $(TORCH_INCLUDES) $< \
	  -o $@ -ltorch_python -ltorch -ltorch_cpu -lc10

$(BUILD)/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(VISIBILITY) $(INCLUDES) $(EXTRA_CFLAGS) -c $< -o $@

# The kernels' short fixed loops over vector halves must be unrolled into registers: -O3 there;
# sqrt need not set errno (it changes no result), so loops with it vectorize.
$(BUILD)/src/finish.o: EXTRA_CFLAGS = -O3 -fno-math-errno
$(BUILD)/src/relu.o: EXTRA_CFLAGS = -O3 # (its masks vectorize)
$(BUILD)/src/kernels_avx512.o: ISA_FLAGS = -mavx512f
$(BUILD)/src/kernels_avx2.o: ISA_FLAGS = -mavx2 -mf16c
$(KERNEL_OBJ): $(BUILD)/src/kernels_%.o: src/kernels_isa.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(VISIBILITY) $(INCLUDES) -O3 -fno-math-errno $(ISA_FLAGS) -DBN_ISA=$* \
	  -c $< -o $@

$(BUILD)/src/mpi/%.o: src/mpi/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(ALL_CFLAGS) $(VISIBILITY) $(INCLUDES) -c $< -o $@

$(BUILD)/tests/mpi/%.o: tests/mpi/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(ALL_CFLAGS) $(INCLUDES) -c $< -o $@

$(BUILD)/libbnorm_mpi.a: $(MPI_OBJ) $(BUILD)/objects
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

# The MPI calls over libbnorm.so (one copy of the library in a process, so that
# bn_set_num_threads reaches the MPI calls too), found beside it ($ORIGIN: build/, or the
# installed lib/). The argument checks sync.c makes before the ranks agree (validate.o: no
# state) are not exported by libbnorm.so, so they come along privately; --no-undefined catches
# any other internal function the MPI calls would need.
MPI_PRIVATE_OBJ := $(BUILD)/src/validate.o
$(BUILD)/libbnorm_mpi.so: $(MPI_OBJ) $(MPI_PRIVATE_OBJ) $(BUILD)/libbnorm.so \
                          $(BUILD)/libbnorm_mpi.map
	$(MPI_CC) $(CFLAGS) -shared -Wl,-soname,libbnorm_mpi.so.$(MAJOR) \
	  -Wl,--version-script=$(BUILD)/libbnorm_mpi.map -Wl,--no-undefined -Wl,-rpath,'$$ORIGIN' \
	  -o $@ $(MPI_OBJ) $(MPI_PRIVATE_OBJ) $(BUILD)/libbnorm.so $(LDFLAGS) $(LDLIBS)

$(BUILD)/test_bnorm_mpi: $(MPI_TEST_OBJ) $(BUILD)/libbnorm_ref.a $(BUILD)/libbnorm_mpi.a $(BUILD)/libbnorm.a
	$(MPI_CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

$(BUILD)/libbnorm.a: $(LIB_OBJ) $(BUILD)/objects
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(BUILD)/libbnorm_io.a: $(IO_OBJ) $(BUILD)/objects
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

# libbnorm_state (include/bnorm_state.h, state/): a batch norm layer's state in safetensors files
# under state_dict keys, for C programs that load a PyTorch checkpoint. It holds io/'s
# safetensors reader and writer and the atomic writer of outputs (built with hidden visibility,
# like every object of a shared library here) and needs cJSON, so it is built where cJSON is
# found; libbnorm needs neither. Its C tests (tests/state/; they reach io/ through libbnorm_io)
# run from tests/python/test_state.py.
STATE_SRC := $(wildcard state/*.c)
STATE_OBJ := $(STATE_SRC:%.c=$(BUILD)/%.o) \
             $(addprefix $(BUILD)/io/,safetensors.o output.o input.o message.o)
STATE_TEST_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/state/*.c))
$(BUILD)/state/%.o:       INCLUDES = -Iio
$(BUILD)/tests/state/%.o: INCLUDES = -Iio -Itests/c
$(BUILD)/state/%.o $(BUILD)/io/%.o: VISIBILITY = -fvisibility=hidden
$(STATE_SRC:%.c=$(BUILD)/%.o) $(STATE_TEST_OBJ): include/bnorm_state.h
STATE_TARGETS := $(if $(HAVE_CJSON),$(BUILD)/libbnorm_state.a $(BUILD)/libbnorm_state.so \
                   $(BUILD)/test_bnorm_state)
all: $(STATE_TARGETS)

# The archive holds one object, linked from them all, in which only the functions of
# bnorm_state.h stay global: io/'s functions cannot clash with a program's (or libbnorm_io's).
$(BUILD)/libbnorm_state.a: $(STATE_OBJ) $(BUILD)/libbnorm_state.syms
	$(CC) -r -nostdlib -o $(BUILD)/state/libbnorm_state.o $(STATE_OBJ)
	objcopy --keep-global-symbols=$(BUILD)/libbnorm_state.syms $(BUILD)/state/libbnorm_state.o
	rm -f $@ && ar rcs $@ $(BUILD)/state/libbnorm_state.o

$(BUILD)/libbnorm_state.map: include/bnorm_state.h
	@mkdir -p $(dir $@)
	$(call EXPORTS,$<) > $@
$(BUILD)/libbnorm_state.syms: $(BUILD)/libbnorm_state.map
	sed -n 's/^ *\(bn_[a-z0-9_]*\);$$/\1/p' $< > $@

# exports the functions of bnorm_state.h only; needs libc, libm and cJSON (not libbnorm: bnorm.h
# gives it types only)
$(BUILD)/libbnorm_state.so: $(STATE_OBJ) $(BUILD)/libbnorm_state.map
	$(CC) $(CFLAGS) -shared -Wl,-soname,libbnorm_state.so.$(MAJOR) \
	  -Wl,--version-script=$(BUILD)/libbnorm_state.map -Wl,--no-undefined \
	  -o $@ $(STATE_OBJ) $(LDFLAGS) -lcjson -lm
	ln -sf libbnorm_state.so $(BUILD)/libbnorm_state.so.$(MAJOR)

$(BUILD)/test_bnorm_state: $(STATE_TEST_OBJ) $(BUILD)/tests/c/main.o $(BUILD)/libbnorm_state.a \
                           $(BUILD)/libbnorm_io.a $(BUILD)/libbnorm.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) -lcjson $(LDLIBS)

# `make test-state`: the state library's C tests, then its Python tests against torch
.PHONY: test-state install-state
test-state: $(STATE_TARGETS) $(BUILD)/libbnorm.so
	@test -n "$(HAVE_CJSON)" || \
	  { echo "make test-state: cJSON is missing: apt-get install libcjson-dev" >&2; exit 1; }
	$(BUILD)/test_bnorm_state
	BNORM_LIBRARY=$(CURDIR)/$(BUILD)/libbnorm.so BNORM_BUILD=$(CURDIR)/$(BUILD) PYTHONPATH=python \
	  $(PYTHON) -m pytest -q tests/python/test_state.py

# A shared library exports the functions its header marks BN_API, and nothing else. The objects
# are built with -fvisibility=hidden; the version script, made from the header, also hides what
# that flag leaves out (GCC 12 exports the dispatchers of target_clones kernels regardless).
# $(BUILD)/libbnorm.so.MAJOR, the name libbnorm_mpi.so asks for, leads to it.
$(BUILD)/libbnorm.so: $(LIB_OBJ) $(BUILD)/objects $(BUILD)/libbnorm.map
	$(CC) $(CFLAGS) -shared -Wl,-soname,libbnorm.so.$(MAJOR) \
	  -Wl,--version-script=$(BUILD)/libbnorm.map -o $@ $(LIB_OBJ) $(LDFLAGS) $(LDLIBS)
	ln -sf libbnorm.so $(BUILD)/libbnorm.so.$(MAJOR)

# the functions HEADER marks BN_API, as a linker version script
EXPORTS = { echo '{ global:'; sed -n 's/^BN_API [^(]*[ *]\(bn_[a-z0-9_]*\)(.*/    \1;/p' $(1); \
            echo '  local: *;'; echo '};'; }
$(BUILD)/libbnorm.map: include/bnorm.h
	@mkdir -p $(dir $@)
	$(call EXPORTS,$<) > $@
$(BUILD)/libbnorm_mpi.map: include/bnorm_mpi.h
	@mkdir -p $(dir $@)
	$(call EXPORTS,$<) > $@

$(BUILD)/cli/comm_mpi.o: cli/comm_mpi.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(MPI_CC) $(ALL_CFLAGS) $(INCLUDES) -c $< -o $@

$(BUILD)/bnorm: $(CLI_OBJ) $(CLI_OBJ_COMM) $(BUILD)/libbnorm_io.a $(BUILD)/libbnorm.a \
                $(if $(HAVE_MPI),$(BUILD)/libbnorm_mpi.a)
	$(CLI_LD) $(CFLAGS) -o $@ $(CLI_OBJ) $(CLI_OBJ_COMM) $(BUILD)/libbnorm_io.a $(CLI_LIBS) \
	  $(BUILD)/libbnorm.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/test_bnorm: $(TEST_OBJ) $(BUILD)/libbnorm_ref.a $(BUILD)/libbnorm_io.a $(BUILD)/libbnorm.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDFLAGS) $(LDLIBS)

# The tests' oracle: a plain scalar reference of every pass (src/reference), linked into the
# test programs and kept out of libbnorm (LIB_SRC is src/*.c only).
REF_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard src/reference/*.c))
$(BUILD)/libbnorm_ref.a: $(REF_OBJ)
	rm -f $@ && ar rcs $@ $^
$(REF_OBJ) $(TEST_OBJ) $(MPI_TEST_OBJ): $(wildcard src/reference/*.h)

demo: $(BUILD)/bnorm
	$(BUILD)/bnorm demo

# Every suite runs. First tests/prerequisites.sh installs what they need (apt-get, on Debian or
# Ubuntu, as root or through sudo) or fails naming the packages; then a new make builds and runs
# them, so that its probes ($(shell) at start-up) see what was just installed.
test:
	PYTHON=$(PYTHON) CC="$(CC)" sh tests/prerequisites.sh
	$(MAKE) test-suites

test-suites: all isa-check
	PYTHON=$(PYTHON) BUILD=$(BUILD) sh tests/run_all.sh

# The same bits on every x86-64: a digest of every result on a grid of cases (the fused calls,
# eval, backward and the stage API), from the kernels chosen at run time and from a build for the
# baseline instruction set only, must be identical, and identical to the committed
# tests/isa/digest.expected: a guard against any change of the arithmetic.
$(BUILD)/digest: tests/isa/digest.c $(BUILD)/tests/c/testutil.o $(BUILD)/libbnorm.a
	$(CC) $(ALL_CFLAGS) -Isrc -Itests/c -o $@ $^ $(LDFLAGS) $(LDLIBS)

isa-check: $(BUILD)/digest
	$(MAKE) -s BUILD=$(BUILD)/baseline EXTRA_DEFS=-DBN_NO_CLONES $(BUILD)/baseline/digest
	$(BUILD)/digest > $(BUILD)/digest.txt
	$(BUILD)/baseline/digest > $(BUILD)/baseline/digest.txt
	@cmp -s $(BUILD)/digest.txt $(BUILD)/baseline/digest.txt || \
	  { diff $(BUILD)/digest.txt $(BUILD)/baseline/digest.txt; \
	    echo "isa-check: the baseline build gives other bits" >&2; exit 1; }
	@for set in avx512f avx2 x86-64; do \
	  $(BUILD)/digest $$set > $(BUILD)/digest.$$set.txt; rc=$$?; \
	  if [ $$rc = 2 ]; then echo "isa-check: no $$set on this CPU"; continue; fi; \
	  [ $$rc = 0 ] && cmp -s $(BUILD)/digest.txt $(BUILD)/digest.$$set.txt || \
	  { diff $(BUILD)/digest.txt $(BUILD)/digest.$$set.txt; \
	    echo "isa-check: the $$set kernels give other bits" >&2; exit 1; }; done
	@cmp -s $(BUILD)/digest.txt tests/isa/digest.expected || \
	  { diff tests/isa/digest.expected $(BUILD)/digest.txt; \
	    echo "isa-check: the bits differ from tests/isa/digest.expected (where the arithmetic changed on purpose, copy $(BUILD)/digest.txt there and say why in the commit)" >&2; exit 1; }
	@echo "isa-check: $$(wc -l < $(BUILD)/digest.txt) cases, the same bits from every kernel set this CPU has, from a baseline build, and as tests/isa/digest.expected"

test-c: $(BUILD)/test_bnorm
	$(BUILD)/test_bnorm

test-python: all
	BNORM_LIBRARY=$(CURDIR)/$(BUILD)/libbnorm.so PYTHONPATH=python $(PYTHON) -m pytest -q tests/python

# One clang build of the libraries with AddressSanitizer, UndefinedBehaviorSanitizer and
# libFuzzer's coverage (build-san/): the C tests of `make sanitize` and the targets of `make fuzz`
# link the same archives, so the kernels (every type, epilogue and set) are compiled with the
# sanitizers once. The coverage hooks cost the tests nothing they need: without libFuzzer they
# are the sanitizer runtime's empty defaults.
# On a CPU without AVX-512 (CPUID, as the library's own choice of set reads it) that set's
# kernels would never run under the sanitizers, and are left out of the build. (The recipes that
# run SAN_MAKE are marked '+': make sees no $(MAKE) in them, and would not share its jobs.)
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_SETS := $(if $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo yes),,-DBN_NO_AVX512)
SAN_MAKE = $(MAKE) BUILD=build-san CC=clang OPT=-O1 EXTRA_DEFS="$(SAN_SETS)" \
  CFLAGS="-O1 -g $(SAN_FLAGS) -fsanitize=fuzzer-no-link" LDFLAGS="-fsanitize=address,undefined"

# The C tests (the state library's too, where cJSON is) under AddressSanitizer and
# UndefinedBehaviorSanitizer. A failed allocation returns NULL, as malloc does, so that
# BN_ERR_NO_MEMORY can be tested.
sanitize:
	+$(SAN_MAKE) build-san/test_bnorm $(if $(HAVE_MPI),build-san/test_bnorm_mpi) \
	  $(if $(HAVE_CJSON),build-san/test_bnorm_state)
	ASAN_OPTIONS=allocator_may_return_null=1 build-san/test_bnorm
	$(if $(HAVE_CJSON),ASAN_OPTIONS=allocator_may_return_null=1 build-san/test_bnorm_state)
	$(if $(HAVE_MPI),ASAN_OPTIONS=detect_leaks=0 mpirun $(MPIRUN_FLAGS) -np 3 build-san/test_bnorm_mpi)

# The C tests (and the MPI tests, on 3 ranks) under ThreadSanitizer, threaded paths included:
# clang's OpenMP runtime (libomp) with its TSan tool, archer, which tells TSan about OpenMP's own
# synchronization. The kernels are built once, without run-time clones: ifunc resolvers run
# before TSan is initialized.
ARCHER ?= $(firstword $(wildcard /usr/lib/llvm-14/lib/libarcher.so /usr/lib/llvm-*/lib/libarcher.so))
# A canary with a deliberate race must be reported first (exit 66), or the run fails.
TSAN_RUN = OMP_TOOL_LIBRARIES=$(ARCHER) ARCHER_OPTIONS=verbose=1 OMP_NUM_THREADS=4 \
  TSAN_OPTIONS="halt_on_error=1 exitcode=66 ignore_noninstrumented_modules=1 allocator_may_return_null=1"
tsan:
	@test -n "$(ARCHER)" || { echo "make tsan: libarcher.so is missing: apt-get install libomp-dev" >&2; exit 1; }
	$(MAKE) BUILD=build-tsan CC=clang OPT=-O1 OPENMP=-fopenmp=libomp \
	  CFLAGS="-O1 -g -fsanitize=thread -fno-omit-frame-pointer -DBN_NO_CLONES" \
	  LDFLAGS="-fsanitize=thread" build-tsan/test_bnorm $(if $(HAVE_MPI),build-tsan/test_bnorm_mpi)
	clang -O1 -g -fsanitize=thread -fopenmp=libomp -o build-tsan/race_canary tests/tsan/race_canary.c
	@$(TSAN_RUN) build-tsan/race_canary >/dev/null 2>&1; \
	  if [ $$? -eq 66 ]; then echo "tsan: the race canary was caught"; \
	  else echo "make tsan: ThreadSanitizer missed the race canary" >&2; exit 1; fi
	$(TSAN_RUN) build-tsan/test_bnorm
	$(if $(HAVE_MPI),$(TSAN_RUN) mpirun $(MPIRUN_FLAGS) -np 3 build-tsan/test_bnorm_mpi)

# The C tests (the state library's too, where cJSON is) under valgrind memcheck: any error or
# leak fails the run. The MPI tests run too, with Open MPI's suppressions for its own runtime and
# without leak checks (Open MPI keeps its memory at exit). valgrind runs a program one thread at a
# time, so the C tests are split into VALGRIND_SHARDS processes (test_bnorm --shard K/N), which
# make -j runs side by side with the others; each one's output is in $(BUILD)/valgrind-*.log.
VALGRIND_SUPP := $(wildcard /usr/share/openmpi/openmpi-valgrind.supp) tests/valgrind/openmpi.supp
VALGRIND_RUN = OMP_NUM_THREADS=2 valgrind -q --error-exitcode=99 --leak-check=full \
  --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect
VALGRIND_SHARDS ?= 4
VALGRIND_PARTS := $(addprefix valgrind-c-,$(shell seq 0 $$(($(VALGRIND_SHARDS) - 1)))) \
  $(if $(HAVE_CJSON),valgrind-state) $(if $(HAVE_MPI),valgrind-mpi)
valgrind: $(VALGRIND_PARTS)
valgrind-tool:
	@command -v valgrind >/dev/null || { echo "make valgrind: apt-get install valgrind" >&2; exit 1; }

# $(call logged,NAME,COMMAND): COMMAND's output in $(BUILD)/NAME.log, its last line shown, the
# whole log shown on failure
logged = $(2) > $(BUILD)/$(1).log 2>&1; st=$$?; tail -n 1 $(BUILD)/$(1).log | sed 's/^/$(1): /'; \
  if [ $$st -ne 0 ]; then cat $(BUILD)/$(1).log >&2; exit $$st; fi
valgrind-c-%: $(BUILD)/test_bnorm valgrind-tool
	@$(call logged,valgrind-c-$*,$(VALGRIND_RUN) $(BUILD)/test_bnorm --shard $*/$(VALGRIND_SHARDS))
valgrind-state: $(BUILD)/test_bnorm_state valgrind-tool
	@$(call logged,valgrind-state,$(VALGRIND_RUN) $(BUILD)/test_bnorm_state)
valgrind-mpi: $(BUILD)/test_bnorm_mpi valgrind-tool
	@$(call logged,valgrind-mpi,OMP_NUM_THREADS=2 mpirun $(MPIRUN_FLAGS) -np 3 valgrind -q \
	  --error-exitcode=99 --leak-check=no $(VALGRIND_SUPP:%=--suppressions=%) $(BUILD)/test_bnorm_mpi)

# libFuzzer targets (tests/fuzz/fuzz_*.c) over the libraries of build-san/ (above).
# `make fuzz` runs each for FUZZ_SECONDS from the committed seeds (tests/fuzz/corpus/<target>);
# what it learns grows build-fuzz/corpus/<target>, and a finding is saved in build-fuzz/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := npy api safetensors state
FUZZ_BINS := $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)
FUZZ_LINK = clang $(WARN) -O1 -g $(SAN_FLAGS) -fsanitize=fuzzer $(OPENMP)

fuzz-build:
	@test -n "$(HAVE_CJSON)" || { echo "make fuzz: cJSON is missing: apt-get install libcjson-dev" >&2; exit 1; }
	+$(SAN_MAKE) build-san/libbnorm.a build-san/libbnorm_io.a build-san/libbnorm_state.a
	@mkdir -p build-fuzz
	$(MAKE) CC=clang $(FUZZ_BINS)

# the safetensors reader needs cJSON, which the build of libbnorm_io above found
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_files.h build-san/libbnorm_io.a \
                   build-san/libbnorm.a
	$(FUZZ_LINK) -Iinclude -Iio -o $@ $< build-san/libbnorm_io.a build-san/libbnorm.a -lcjson -lm

# the state files' reader and writer, over libbnorm_state
build-fuzz/fuzz_state: tests/fuzz/fuzz_state.c tests/fuzz/fuzz_files.h build-san/libbnorm_state.a
	$(FUZZ_LINK) -Iinclude -o $@ $< build-san/libbnorm_state.a -lcjson -lm

# Each run's log is build-fuzz/fuzz_<target>.log; its last coverage line and statistics are shown,
# each line headed by its target. The runs are separate targets, so that make -j runs them side by
# side, one core each (one OpenMP thread each).
fuzz: $(FUZZ_TARGETS:%=fuzz-run-%)

fuzz-run-%: fuzz-build
	@mkdir -p build-fuzz/corpus/$* && \
	if OMP_NUM_THREADS=1 build-fuzz/fuzz_$* -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -timeout=20 \
	     -rss_limit_mb=2048 -max_len=4096 -artifact_prefix=build-fuzz/$*- \
	     build-fuzz/corpus/$* tests/fuzz/corpus/$* > build-fuzz/fuzz_$*.log 2>&1; then \
	  { echo "$(FUZZ_SECONDS) s"; grep -E '^#[0-9]+.*cov:' build-fuzz/fuzz_$*.log | tail -n 1; \
	    grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' build-fuzz/fuzz_$*.log; \
	  } | sed 's/^/fuzz_$*: /'; \
	else \
	  tail -n 60 build-fuzz/fuzz_$*.log; echo "fuzz_$*: FINDING (see build-fuzz/)" >&2; exit 1; \
	fi

# The Python package goes to PREFIX's directory for PYTHON's packages: Debian's interpreters
# look in PREFIX/lib/pythonX.Y/dist-packages (/usr/local/lib/python3.11/dist-packages for the
# default PREFIX), others in site-packages; set PYTHON_SITE to choose, or to nothing to skip it.
PYTHON_SITE ?= $(shell $(PYTHON) -c 'import sys, sysconfig; \
  kind = "dist-packages" if "dist-packages" in sysconfig.get_path("purelib") else "site-packages"; \
  print("$(PREFIX)/lib/python%d.%d/%s" % (sys.version_info[:2] + (kind,)))' 2>/dev/null)

install: all install-state
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/bnorm.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libbnorm.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libbnorm.so $(DESTDIR)$(PREFIX)/lib/libbnorm.so.$(VERSION)
	ln -sf libbnorm.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbnorm.so.$(MAJOR)
	ln -sf libbnorm.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbnorm.so
	install -m 755 $(BUILD)/bnorm $(DESTDIR)$(PREFIX)/bin/
ifeq ($(HAVE_MPI),yes)
	install -m 644 include/bnorm_mpi.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libbnorm_mpi.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libbnorm_mpi.so $(DESTDIR)$(PREFIX)/lib/libbnorm_mpi.so.$(VERSION)
	ln -sf libbnorm_mpi.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbnorm_mpi.so.$(MAJOR)
	ln -sf libbnorm_mpi.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbnorm_mpi.so
endif
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' bnorm.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/bnorm.pc
ifneq ($(PYTHON_SITE),)
	install -d $(DESTDIR)$(PYTHON_SITE)/bnorm
	install -m 644 python/bnorm/*.py $(DESTDIR)$(PYTHON_SITE)/bnorm/
	$(if $(TORCH_EXT),install -m 644 $(TORCH_EXT) $(DESTDIR)$(PYTHON_SITE)/bnorm/)
	echo 'LIBDIR = "$(PREFIX)/lib"  # written by make install: where libbnorm.so is' \
	  > $(DESTDIR)$(PYTHON_SITE)/bnorm/_installed.py
endif

# libbnorm_state where cJSON is found: its header, libraries and bnorm_state.pc
install-state: all
ifneq ($(HAVE_CJSON),)
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/bnorm_state.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libbnorm_state.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libbnorm_state.so $(DESTDIR)$(PREFIX)/lib/libbnorm_state.so.$(VERSION)
	ln -sf libbnorm_state.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbnorm_state.so.$(MAJOR)
	ln -sf libbnorm_state.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libbnorm_state.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' bnorm_state.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/bnorm_state.pc
endif

clean:
	rm -rf build build-san build-tsan build-fuzz

# `make bench`: bnorm, PyTorch and oneDNN side by side on the default grid, interleaved, with the
# memory roofline; writes bench/results.json, bench/chart.png and bench/table.md; then the
# per-call cost of bnorm.torch against torch.nn on a tiny layer (bench/python_overhead.py,
# bench/overhead.json) and the throughput of `bnorm fit` against reading the same file
# (bench/fit.py). Needs
# python3-torch, python3-matplotlib and libdnnl-dev (none of them is needed to build bnorm).
.PHONY: bench bench-fit
bench: $(BUILD)/bnorm $(BUILD)/onednn_peer
	$(PYTHON) bench/run.py --build $(BUILD)
	BNORM_LIBRARY=$(CURDIR)/$(BUILD)/libbnorm.so $(PYTHON) bench/python_overhead.py
	$(PYTHON) bench/fit.py --build $(BUILD)

# `bnorm fit` on a 1 GiB file against reading the same file (needs only numpy)
bench-fit: $(BUILD)/bnorm
	$(PYTHON) bench/fit.py --build $(BUILD)

# two builds of libbnorm.so timed in turns in one process (bench/compare.py's timer)
$(BUILD)/bench_ab: bench/ab.c include/bnorm.h cli/cli.h $(BUILD)/cli/timing.o $(BUILD)/cli/random.o
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) -Iinclude -Icli -o $@ $< $(BUILD)/cli/timing.o $(BUILD)/cli/random.o -ldl -lm

$(BUILD)/onednn_peer: bench/onednn_peer.c
	@test -n "$(call have_header,oneapi/dnnl/dnnl.h)" || \
	  { echo "make bench: oneDNN is missing: apt-get install libdnnl-dev" >&2; exit 1; }
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O2 -fopenmp -o $@ $< -ldnnl -lm

# One-shot entry points. `make setup` builds .venv (torch/torchvision first, pinned: see ../shared/ENV.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
RUN_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: setup mobile-model test bench profile-training bench-real pareto-real real-long real-gpu teacher-pretrain clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[ncnn,coreml,test]"
	@echo "Installed:"; $(PY) -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|torchvision|timm|numpy|onnx|onnxruntime|onnxsim|ncnn|pnnx|coremltools|opencv-python-headless|pydantic|pytest)=='
	@touch $@

mobile-model: setup
	$(PY) -m pipeline run --profile $(PROFILE) $(RUN_ARGS)

test: setup native-deps
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pipeline run --profile $(PROFILE) --from benchmark $(RUN_ARGS)

# Where a training step of the profile's student goes (torch.profiler; benchmarks/step_profile.py): its parts and kernels.
# RUN_ARGS='--set distill.optim.mixed_precision=false' profiles fp32 where the CPU would train in bf16.
profile-training: setup
	$(PY) -m app.profile_training --profile $(PROFILE) $(RUN_ARGS)

# Real faces (configs/real.yaml): the pretrained EdgeFace-XS teacher ($$FACE_MODELS_ROOT, default ../shared/models)
# distilled into MobileFaceNet on aligned LFW + CelebA ($$FACE_DATA_ROOT, default ../shared/data); about 50 min on 2 cores.
bench-real: setup
	$(PY) -m pipeline run --profile real $(RUN_ARGS)

# The same run plus students of three widths: accuracy against ncnn latency (reuses bench-real's stages).
pareto-real: setup
	$(PY) -m pipeline run --profile real_pareto $(RUN_ARGS)

# The recipe with a long schedule and an accuracy-against-time curve (hours on CPU; a GPU profile for users).
real-long: setup
	$(PY) -m pipeline run --profile real_long $(RUN_ARGS)

# The same recipe on a GPU for a wall-clock budget: a short probe sizes the step count to MINUTES (README, "On a GPU").
MINUTES ?= 10
real-gpu: setup
	$(PY) -m app.budgeted_run --profile real_gpu --minutes $(MINUTES) $(RUN_ARGS)

# The shipped default teacher (pretrained/, pinned by hash in configs/default.yaml): trains configs/teacher_pretrain.yaml
# to its teacher stage and packs it as fp16 safetensors + a JSON record (cost: pretrained/README.md).
teacher-pretrain: setup
	$(PY) -m pipeline run --profile teacher_pretrain --runs-dir $(RUNS_DIR) --until teacher $(RUN_ARGS)
	$(PY) -m pipeline pack-teacher $(RUNS_DIR)/teacher_pretrain --out pretrained/vit_face_tiny_synthetic

clean:
	rm -rf runs build .pytest_cache

# Latency beyond this machine (see benchmarks/android.py and docker/). RUN_NAME is the profile's run_name.
RUNS_DIR ?= runs
RUN_NAME ?= $(PROFILE)
BENCHNCNN ?=
ANDROID_ARGS ?=
DOCKER ?= docker
IMAGE ?= face-distill
TORCH_INDEX_URL ?=
L4T_BASE ?= nvcr.io/nvidia/l4t-jetpack:r36.4.0
.PHONY: bench-android docker-cpu docker-jetson

# A phone on adb (USB debugging on): ANDROID_ARGS="--threads 1 2 4 --loops 50 --serial X". BENCHNCNN=/path/to/benchncnn
# built for the phone, else the project's face_bench (same command line), built here as a static aarch64 program: no
# NDK needed. No phone: FAKE_PHONE=max (or cortex-a76, cortex-a53) runs the same flow on an emulated arm64 phone, the
# test suite's fake adb whose pushed aarch64 programs run under qemu-aarch64 -cpu $(FAKE_PHONE): rows say "emulated".
FAKE_PHONE ?=
FAKE_PHONE_ROOT ?= $(RUNS_DIR)/fake-phone
PHONE_ENV = $(if $(FAKE_PHONE),mkdir -p $(FAKE_PHONE_ROOT) && PATH="$(CURDIR)/tests/fixtures/android/fake_adb:$$PATH" \
  FAKE_ADB_ROOT="$(abspath $(FAKE_PHONE_ROOT))" FAKE_ADB_FIXTURES="$(CURDIR)/tests/fixtures/android/qemu_phone" \
  FAKE_ADB_DEVICES=qemu-arm64 FAKE_ADB_QEMU_CPU=$(FAKE_PHONE))
bench-android: setup native-deps
	$(PHONE_ENV) $(PY) -m benchmarks.android --run-dir $(RUNS_DIR)/$(RUN_NAME) $(if $(BENCHNCNN),--benchncnn $(BENCHNCNN)) $(ANDROID_ARGS)

docker-cpu:
	$(DOCKER) build -f docker/Dockerfile --target deploy -t $(IMAGE):cpu-deploy .
	$(DOCKER) build -f docker/Dockerfile --target full -t $(IMAGE):cpu .

# Without a Docker daemon: both CPU targets built with buildah on a debootstrapped base (Python packages from a wheelhouse
# made here) and run for real: the deploy image times and parity-checks runs/$(RUN_NAME)'s exports (`make mobile-model`,
# run or reused first) and must hold no torch; the full image runs the tiny profile; the Jetson image is built for linux/arm64 under
# qemu (binfmt_misc) on an arm64 Debian stand-in for L4T and its entrypoint run, emulated, on the ncnn exports.
# DOCKER_CHECK_ARGS="--targets deploy" for part of it. Results in build/docker/check.json (app/docker_check.py).
DOCKER_CHECK_ARGS ?=
.PHONY: docker-check docker-deps
docker-deps:
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null && command -v qemu-aarch64-static >/dev/null || \
	  { apt-get update >/dev/null; apt-get install -y --no-install-recommends buildah debootstrap qemu-user-static binfmt-support >/dev/null; }
	@mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@test -e /proc/sys/fs/binfmt_misc/qemu-aarch64 || update-binfmts --enable qemu-aarch64

docker-check: mobile-model docker-deps
	$(PY) -m app.docker_check --run-dir $(RUNS_DIR)/$(RUN_NAME) --profile $(PROFILE) $(DOCKER_CHECK_ARGS)

# On the Jetson; TORCH_INDEX_URL=<NVIDIA's wheel index for your JetPack> adds torch (the TensorRT Python runner needs it).
docker-jetson:
	$(DOCKER) build -f docker/Dockerfile --target jetson --build-arg BASE_IMAGE=$(L4T_BASE) -t $(IMAGE):jetson \
	  $(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) .

# Distillation ablation (app/ablation.py): every variant x the profile's seeds on one data set, teacher and budget.
# ABLATION_ARGS e.g. "--variants no_kd,urfm_apt --seeds 0" for a partial run; finished trainings are reused.
ABLATION_ARGS ?=
.PHONY: ablation ablation-real

# Then the profile's own pipeline run, whose report (runs/ablation/report/) carries the ablation table.
ablation: setup
	$(PY) -m app.ablation --profile ablation --runs-dir $(RUNS_DIR) $(ABLATION_ARGS)
	$(PY) -m pipeline run --profile ablation --runs-dir $(RUNS_DIR)

# Aligned LFW from ../shared/data (skipped, with the reason, where it is absent).
ablation-real: setup
	$(PY) -m app.ablation --profile ablation_real --runs-dir $(RUNS_DIR) $(ABLATION_ARGS)
	$(PY) -m pipeline run --profile ablation_real --runs-dir $(RUNS_DIR)

# Native ncnn tools (deploy/native: face_embed, face_bench) against libncnn built from ncnn's source archive, cached in build/.
# Debian packages: faketime (fetches the archive), cmake/g++, g++-aarch64-linux-gnu and qemu-user (ARM).
NATIVE_PACKAGES := cmake:cmake g++:g++ faketime:faketime aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64:qemu-user
ARM_TARGETS ?= ["host","arm64:max","arm64:cortex-a53"]
ANDROID_NDK ?=
ANDROID_TOOL ?=
.PHONY: native-deps native android-tools arm-parity parity-android parity-jetson

native-deps:
	@missing=""; for pair in $(NATIVE_PACKAGES); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then echo "native-deps: installing missing Debian packages:$$missing"; \
	  apt-get install -y --no-install-recommends $$missing >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y --no-install-recommends $$missing >/dev/null; }; \
	else echo "native-deps: all present ($(foreach p,$(NATIVE_PACKAGES),$(firstword $(subst :, ,$(p)))))"; fi

# This machine's tools (and the phone's, with ANDROID_NDK=/path/to/ndk set).
native: setup native-deps
	$(PY) -m deploy.native.build --target host $(if $(ANDROID_NDK),android-arm64)

android-tools: setup native-deps
	@test -n "$(ANDROID_NDK)" || { echo "android-tools: set ANDROID_NDK=/path/to/android-ndk (r23 or newer)"; exit 2; }
	$(PY) -m deploy.native.build --target android-arm64

# The pipeline with the native parity stage on x86 and on two emulated ARM CPUs, and face_bench latency rows.
arm-parity: setup native-deps
	$(PY) -m pipeline run --profile $(PROFILE) --set 'native_parity.targets=$(ARM_TARGETS)' --set benchmark.native_tools=true $(RUN_ARGS)

# A phone on adb, or FAKE_PHONE=max (see bench-android): ANDROID_TOOL=/path/to/face_embed, else the NDK build where
# ANDROID_NDK is set, else the static aarch64 build (no NDK); ANDROID_ARGS="--serial X". The fake phone takes the
# first 64 faces (qemu: about 2 s per face in fp32, 9 s with fp16 arithmetic).
parity-android: setup native-deps
	$(PHONE_ENV) $(PY) -m app.device_parity --run-dir $(RUNS_DIR)/$(RUN_NAME) --profile $(PROFILE) $(if $(FAKE_PHONE),--max-images 64) android \
	  $(if $(ANDROID_TOOL),--tool $(ANDROID_TOOL)) $(ANDROID_ARGS)

# On the Jetson (or inside its image): TensorRT engines built there from the run's ONNX export, gated like every backend.
parity-jetson: setup
	$(PY) -m app.device_parity --run-dir $(RUNS_DIR)/$(RUN_NAME) --profile $(PROFILE) here --formats tensorrt

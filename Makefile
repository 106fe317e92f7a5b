# relpose_ros: `make demo` (the main job) and `make test` (the suite). Both set up .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.relpose-installed
ROS_WHEELS := ros-rclpy ros-rmw-fastrtps-cpp ros-sensor-msgs ros-geometry-msgs ros-std-msgs \
              ros-std-srvs ros-diagnostic-msgs ros-nav-msgs

.PHONY: venv demo test test-fast clean

venv: $(STAMP)

# torch first, pinned: the CPU build of 2.13.0 is on local disk; anything else would pull a CUDA build.
$(STAMP): setup.py package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet $(ROS_WHEELS)
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relpose demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest test -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest test -q -ra -m "not slow"

clean:
	rm -rf demo_output build *.egg-info .pytest_cache

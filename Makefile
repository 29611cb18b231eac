# The two entry points the README starts with, plus helpers.
SHELL := /bin/bash

.PHONY: demo demo-down test bench

demo:
	bash scripts/demo.sh up

demo-down:
	bash scripts/demo.sh down

test:
	bash scripts/test.sh

bench:
	ARGS="$(ARGS)" bash scripts/bench.sh

# The benchmark (bench/, loadtests/): see docs/performance.md.
#   make bench-quick                  every figure of the report, in under two minutes
#   make bench                        the full matrix (about 7 min), published to bench/latest/
#                                     and docs/performance.md
#   make bench EXECUTOR=kubernetes    on the test control plane (S3 storage on SeaweedFS)
#   make bench STORAGE=s3             local executor, S3 storage on SeaweedFS
# Results: bench/results/<time>/report.{json,md} and the PNG plots.
EXECUTOR ?= local
STORAGE ?=
BENCH_ARGS ?=
BENCH_FLAGS = --executor $(EXECUTOR) $(if $(STORAGE),--storage $(STORAGE)) $(BENCH_ARGS)

.PHONY: bench bench-quick

## make bench: the full matrix; refreshes bench/latest/ and the figures in docs/performance.md
bench: $(STAMP)
	$(PY) -m bench --matrix full --profile --publish $(BENCH_FLAGS)

## make bench-quick: a short matrix with every figure (< 2 min); publishes nothing
bench-quick: $(STAMP)
	$(PY) -m bench --matrix quick $(BENCH_FLAGS)

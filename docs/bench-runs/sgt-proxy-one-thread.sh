#!/bin/sh
# Wrapper used for the "int8-proxyall" rows of loadtest-run4.jsonl: the proxy with candle's pool
# and rayon at one thread (each request's transform on its own blocking thread).
if [ "$1" = proxy ]; then export CANDLE_NUM_THREADS=1 RAYON_NUM_THREADS=1; fi
exec "${NEW_BIN:-target/release/sgt}" "$@"

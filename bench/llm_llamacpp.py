"""llama.cpp reference of `sgt bench llm --stored`: the same GGUF, prefill of a 128-token
prompt and greedy decoding of 64 tokens after a 16-token prompt, same thread count. Prints one
JSON line like the Rust side. Benchmark only (`pip install llama-cpp-python`; on CPUs where its
native build crashes, build with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF
-DGGML_AMX_INT8=OFF")."""
import argparse, json, os, random, time

from llama_cpp import Llama


def peak_rss_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--prefill-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=int(os.environ.get("SGT_THREADS", os.cpu_count())))
    a = p.parse_args()
    m = Llama(model_path=a.gguf, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads,
              n_batch=512, verbose=False, seed=0)
    rng = random.Random(0)
    vocab = m.n_vocab()
    ids = [rng.randrange(100, vocab) for _ in range(a.prefill_tokens)]
    m.reset(); m.eval(ids)  # warm-up
    t = time.perf_counter()
    for _ in range(3):
        m.reset()
        m.eval(ids)
    prefill = 3 * a.prefill_tokens / (time.perf_counter() - t)
    peak_rss_reset()
    m.reset()
    n, t_first = 0, None
    for _tok in m.generate(ids[:16], top_k=1, temp=0.0, reset=True):
        if t_first is None:
            t_first = time.perf_counter()
        else:
            n += 1
        if n >= a.decode_tokens:
            break
    decode = n / (time.perf_counter() - t_first)
    print(json.dumps({"impl": "llama.cpp", "threads": a.threads, "prefill_tokens_per_s": prefill,
                      "decode_tokens_per_s": decode, "decode_peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# End-to-end tests of the `t2` command-line tool: usage errors are one line and a non-zero
# exit, generation reproduces llama2.c's run.c on stories260K, logits round-trip through .npy.
#   test_cli.sh T2_BINARY MODELS_DIR DATA_DIR TMP_DIR
set -uo pipefail
t2=$1 models=$2 data=$3 tmp=$4
mkdir -p "$tmp"
failures=0 passed=0
pass() { passed=$((passed + 1)); }
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# expect_exit CODE COMMAND...: exit status CODE; on failure (CODE != 0) exactly one stderr line.
expect_exit() {
    local want=$1; shift
    "$@" >"$tmp/out" 2>"$tmp/err"
    local got=$?
    if [[ $got -ne $want ]]; then fail "exit $got, wanted $want: $*"; return; fi
    if [[ $want -ne 0 && $(wc -l <"$tmp/err") -ne 1 ]]; then
        fail "wanted one line on stderr from: $* — got: $(cat "$tmp/err")"; return
    fi
    pass
}

bin=$models/stories260K.bin tok=$models/tok512.bin
expect_exit 0 "$t2" --help
expect_exit 0 "$t2" generate --help
expect_exit 0 "$t2" logits --help
expect_exit 0 "$t2" info --help
expect_exit 2 "$t2"
expect_exit 2 "$t2" frobnicate
expect_exit 2 "$t2" generate --model "$bin" --bogus 1
expect_exit 2 "$t2" generate --model "$bin" --tokenizer "$tok" --steps -1
expect_exit 2 "$t2" generate --model "$bin" --tokenizer "$tok" --temperature nan
expect_exit 2 "$t2" generate --model "$bin" --tokenizer "$tok" --top-p 1.5
expect_exit 2 "$t2" generate --model "$bin" --tokenizer "$tok" --dtype f64
expect_exit 2 "$t2" generate --tokenizer "$tok"
expect_exit 2 "$t2" logits --model "$bin" --tokens 1,x,3
expect_exit 1 "$t2" logits --model "$bin" --tokens 1,999
expect_exit 1 "$t2" info --model "$tmp/does-not-exist.bin"
grep -q "does-not-exist.bin" "$tmp/err" || fail "the error does not name the missing file"
head -c 1000 "$bin" >"$tmp/truncated.bin"
expect_exit 1 "$t2" info --model "$tmp/truncated.bin"
grep -q "truncated.bin" "$tmp/err" || fail "the error does not name the truncated file"

# Greedy decoding: the opening of the published story, from the .bin and from the GGUF.
story="Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
for model in "$bin --tokenizer $tok" "$models/stories260K.gguf"; do
    # shellcheck disable=SC2086
    out=$("$t2" generate --model $model --temperature 0 --steps 40 --threads 2 2>"$tmp/err")
    [[ $out == "$story"* ]] && pass || fail "greedy text from $model: $out"
    grep -q "decode:.*tok/s" "$tmp/err" && pass || fail "no speed report on stderr: $(cat "$tmp/err")"
done
# Token ids as run.c produced them (first reference run: empty prompt, 512 steps).
want=$(grep -v '^#' "$data/stories260K_greedy_runc.txt" | sed -n 3p | sed 's/ *$//')
got=$("$t2" generate --model "$bin" --tokenizer "$tok" --temperature 0 --steps 512 --ids 2>/dev/null)
[[ $got == "$want" ]] && pass || fail "--ids differ from run.c's reference"
for dtype in "--dtype bf16" "--mmap"; do
    # shellcheck disable=SC2086
    out=$("$t2" generate --model "$bin" --tokenizer "$tok" --temperature 0 --steps 20 $dtype 2>/dev/null)
    [[ $out == "Once upon a time"* ]] && pass || fail "$dtype: $out"
done
# Sampling is reproducible from the seed.
a=$("$t2" generate --model "$bin" --tokenizer "$tok" --seed 7 --steps 60 --ids 2>/dev/null)
b=$("$t2" generate --model "$bin" --tokenizer "$tok" --seed 7 --steps 60 --ids --threads 1 2>/dev/null)
[[ -n $a && $a == "$b" ]] && pass || fail "same seed, different samples"

# Logits: text and .npy agree, shapes are right.
"$t2" logits --model "$bin" --tokens 1,403,407 >"$tmp/logits.txt" 2>"$tmp/err" || fail "logits: $(cat "$tmp/err")"
"$t2" logits --model "$bin" --tokens 1,403,407 --out "$tmp/last.npy" || fail "logits --out"
"$t2" logits --model "$bin" --tokens 1,403,407 --all --out "$tmp/all.npy" || fail "logits --all --out"
/usr/bin/python3 - "$tmp" <<'PY' && pass || fail "logits .npy check"
import sys, numpy as np
tmp = sys.argv[1]
text = np.loadtxt(f"{tmp}/logits.txt", dtype=np.float64)
last, every = np.load(f"{tmp}/last.npy"), np.load(f"{tmp}/all.npy")
assert last.dtype == np.float32 and last.shape == (512,), last.shape
assert every.shape == (3, 512), every.shape
assert np.allclose(text, last, rtol=0, atol=1e-6), abs(text - last).max()
assert np.allclose(every[-1], last, rtol=1e-6, atol=1e-6)
assert int(last.argmax()) == 261  # run.c's next token after "Once upon a"
PY

out=$("$t2" info --model "$models/stories260K.gguf")
grep -q "format *gguf v3" <<<"$out" && grep -q "n_kv_heads *4" <<<"$out" && grep -q "tokenizer *embedded" <<<"$out" &&
    pass || fail "info: $out"

echo "$passed passed, $failures failed"
[[ $failures -eq 0 ]]

#!/usr/bin/env bash
# End-to-end tests of the `t2` command-line tool: usage errors are one line and a non-zero
# exit, generation reproduces llama2.c's run.c on stories260K, logits round-trip through .npy,
# decompositions and experts work end to end.
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

# The parser's messages (CLI11): one line naming the command, what is wrong, and where to look.
# expect_message CODE TEXT COMMAND...: exit CODE with one stderr line that contains TEXT.
expect_message() {
    local want=$1 text=$2; shift 2
    expect_exit "$want" "$@"
    grep -qF -- "$text" "$tmp/err" && pass || fail "wanted '$text' from: $* — got: $(cat "$tmp/err")"
}
expect_message 2 "t2: no command given (see 't2 --help')" "$t2"
expect_message 2 "t2: unknown command 'frobnicate' (see 't2 --help')" "$t2" frobnicate
expect_message 2 "t2: unknown option '--bogus'" "$t2" --bogus generate
expect_message 2 "t2 generate: unknown option '--bogus' (see 't2 generate --help')" "$t2" generate --model "$bin" --bogus 1
expect_message 2 "t2 generate: --model: 1 required FILE missing" "$t2" generate --model
expect_message 2 "t2 generate: --steps: 1 required N missing" "$t2" generate --model "$bin" --steps
expect_message 2 "t2 generate: --model is required" "$t2" generate --steps 4
expect_message 2 "t2 logits: --tokens is required" "$t2" logits --model "$bin"
expect_message 2 "--steps: wants a number from 0 to 16777216, got 'abc'" "$t2" generate --model "$bin" --steps abc
expect_message 2 "--steps: wants a number from 0 to 16777216, got '-1'" "$t2" generate --model "$bin" --steps -1
expect_message 2 "--steps: wants a number from 0 to 16777216, got '12x'" "$t2" generate --model "$bin" --steps 12x
expect_message 2 "--temperature: wants a number from 0.000000 to 100.000000, got '-1'" \
    "$t2" generate --model "$bin" --temperature -1
expect_message 2 "--seed: wants a number from 0 to 18446744073709551615, got '1.5'" "$t2" generate --model "$bin" --seed 1.5
expect_message 2 "t2 logits: --threads: wants a number from 1 to 1024, got '0'" "$t2" logits --model "$bin" --tokens 1 --threads 0
expect_message 2 "t2 decompose: --threads: wants a number from 1 to 1024, got 'all'" \
    "$t2" decompose --model "$bin" --out "$tmp/x.safetensors" --threads all
expect_message 2 "t2 info: unexpected argument 'extra'" "$t2" info --model "$bin" extra
expect_message 2 "t2 expert: no subcommand given" "$t2" expert
expect_message 2 "t2 expert: unknown subcommand 'frobnicate' (see 't2 expert --help')" "$t2" expert frobnicate
expect_message 2 "t2 expert info: FILE is required (see 't2 expert info --help')" "$t2" expert info
expect_message 2 "t2 expert info: unexpected argument 'b'" "$t2" expert info a b
# --help lists the commands, and each command's --help its options (exit 0, on stdout).
expect_exit 0 "$t2" --help
for cmd in generate logits info decompose expert; do grep -q "^  $cmd " "$tmp/out" || fail "--help omits $cmd"; done
while IFS='|' read -r cmd options; do
    # shellcheck disable=SC2086
    expect_exit 0 "$t2" $cmd --help
    for option in $options; do
        grep -q -- "^  $option\b" "$tmp/out" && pass || fail "'t2 $cmd --help' omits $option: $(cat "$tmp/out")"
    done
done <<'EOF_HELP'
generate|--model --tokenizer --tokenizer-prefix --prompt --steps --temperature --top-p --top-k --seed --ids --threads --dtype --mmap --decomposition --expert
logits|--model --tokens --all --out --threads --dtype --mmap --decomposition --expert
info|--model --adapter --matrices
decompose|--model --out --matrices --precision --threads
expert|info
expert info|FILE
EOF_HELP
expect_exit 0 "$t2" --version
grep -q "^t2 [0-9]" "$tmp/out" && pass || fail "--version: $(cat "$tmp/out")"
# A tokenizer of another vocabulary size is refused in the user's terms, unless asked for.
expect_exit 1 "$t2" generate --model "$bin" --tokenizer "$models/tokenizer.bin" --steps 4
grep -q "the tokenizer holds 32000 tokens, the model's vocabulary is 512" "$tmp/err" && pass ||
    fail "tokenizer mismatch message: $(cat "$tmp/err")"
expect_exit 0 "$t2" generate --model "$bin" --tokenizer "$models/tokenizer.bin" --tokenizer-prefix --steps 4
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

# The file read into memory (default) and left mapped (--mmap) give bit-identical logits.
for model in "$bin" "$models/stories260K.gguf"; do
    a=$("$t2" logits --model "$model" --tokens 1,403,407,261 --all 2>&1)
    b=$("$t2" logits --model "$model" --tokens 1,403,407,261 --all --mmap 2>&1)
    [[ -n $a && $a == "$b" ]] && pass || fail "logits of $model differ with --mmap"
done
head -c 100000 "$bin" >"$tmp/cut.bin"
expect_exit 1 "$t2" logits --model "$tmp/cut.bin" --tokens 1
grep -q "cut.bin" "$tmp/err" || fail "the error does not name the truncated file"
expect_exit 1 "$t2" logits --model "$tmp/cut.bin" --tokens 1 --mmap

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

# SVF: decompose, then experts written by an independent writer (Python) change the model
# exactly as the definition says: z = 1, and a uniform z with rescaling, give the base
# logits back; another z does not; an expert of another model is refused.
expect_exit 0 "$t2" decompose --help
expect_exit 0 "$t2" expert --help
expect_exit 2 "$t2" decompose --model "$bin" --out "$tmp/x.safetensors" --matrices 'layers.(1'
expect_exit 2 "$t2" decompose --model "$bin" --out "$tmp/x.safetensors" --matrices nothing
expect_exit 2 "$t2" decompose --model "$bin" --out "$tmp/x.safetensors" --precision f16
expect_exit 2 "$t2" expert frobnicate
expect_exit 2 "$t2" info --model "$bin" --adapter lora:0
"$t2" decompose --model "$bin" --out "$tmp/svd.safetensors" --threads 2 2>"$tmp/err" || fail "decompose: $(cat "$tmp/err")"
grep -q "^\[15/15\] layers\.[0-4]\.feed_forward\.w[123] " "$tmp/err" && grep -q "decomposed 15 matrices" "$tmp/err" &&
    pass || fail "decompose progress: $(cat "$tmp/err")"
out=$("$t2" info --model "$bin" --adapter svf)
grep -q "adapter *svf on mlp: 15 matrices, 960 trainable parameters" <<<"$out" && pass || fail "info --adapter: $out"
/usr/bin/python3 - "$tmp" <<'PY' && pass || fail "writing experts"
import json, struct, sys, numpy as np
tmp = sys.argv[1]
with open(f"{tmp}/svd.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
meta = header.pop("__metadata__")
assert meta["format"] == "t2.decomposition" and meta["selection"] == "mlp", meta
ranks = {k[:-2]: v["shape"][0] for k, v in header.items() if k.endswith(".S")}
assert len(ranks) == 15 and all(r == 64 for r in ranks.values()), ranks

def write_expert(path, zs, rescale, model_hash=meta["base_model_hash"]):
    names = sorted(zs)
    tensors, offset = {}, 0
    for name in names:
        size = 4 * len(zs[name])
        tensors[f"{name}.z"] = {"dtype": "F32", "shape": [len(zs[name])], "data_offsets": [offset, offset + size]}
        offset += size
    tensors["__metadata__"] = {"format": "t2.expert", "format_version": "1", "base_model_hash": model_hash,
                               "matrices": json.dumps(ranks), "rescale": "true" if rescale else "false",
                               "task": "cli test", "training": "written by hand"}
    text = json.dumps(tensors).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            f.write(np.asarray(zs[name], dtype="<f4").tobytes())

write_expert(f"{tmp}/ones.safetensors", {k: np.ones(r) for k, r in ranks.items()}, False)
write_expert(f"{tmp}/half.safetensors", {k: np.full(r, 0.5) for k, r in ranks.items()}, True)
write_expert(f"{tmp}/ramp.safetensors", {k: np.linspace(0.2, 1.8, r) for k, r in ranks.items()}, False)
write_expert(f"{tmp}/foreign.safetensors", {k: np.ones(r) for k, r in ranks.items()}, False, "0" * 64)
PY
out=$("$t2" expert info "$tmp/ramp.safetensors")
grep -q "task *cli test" <<<"$out" && grep -q "matrices *15" <<<"$out" &&
    grep -q "layers.4.feed_forward.w3 *rank 64" <<<"$out" && pass || fail "expert info: $out"
"$t2" logits --model "$bin" --tokens 1,403,407 --all --out "$tmp/base.npy" || fail "logits"
for expert in ones half ramp; do
    "$t2" logits --model "$bin" --tokens 1,403,407 --all --decomposition "$tmp/svd.safetensors" \
        --expert "$tmp/$expert.safetensors" --out "$tmp/$expert.npy" || fail "logits with $expert"
done
/usr/bin/python3 - "$tmp" <<'PY' && pass || fail "expert logits"
import sys, numpy as np
tmp = sys.argv[1]
base = np.load(f"{tmp}/base.npy")
for same in ("ones", "half"):
    assert np.allclose(np.load(f"{tmp}/{same}.npy"), base, rtol=1e-4, atol=1e-4), same
assert abs(np.load(f"{tmp}/ramp.npy") - base).max() > 1e-2
PY
expect_exit 1 "$t2" logits --model "$bin" --tokens 1 --decomposition "$tmp/svd.safetensors" --expert "$tmp/foreign.safetensors"
grep -q "another model" "$tmp/err" || fail "a foreign expert is not refused as such: $(cat "$tmp/err")"
expect_exit 2 "$t2" logits --model "$bin" --tokens 1 --expert "$tmp/ones.safetensors"
out=$("$t2" generate --model "$bin" --tokenizer "$tok" --temperature 0 --steps 40 \
      --decomposition "$tmp/svd.safetensors" --expert "$tmp/ones.safetensors" 2>/dev/null)
[[ $out == "$story"* ]] && pass || fail "greedy text with the identity expert: $out"

# train-expert: every method writes an expert that records how it was trained; bad data and
# flags are refused; a run killed with SIGKILL and run again resumes from its checkpoint and
# writes the expert an uninterrupted run writes.
/usr/bin/python3 - "$tmp/pairs.jsonl" <<'PY' || fail "writing pairs"
import json, sys
pairs = [("Once upon a time, there was a little", " girl"), ("Lily liked to play with her", " toys"),
         ("The sun was", " shining"), ("One day, a little boy named", " Tim"), ("She went to the", " park"),
         ("He was very", " happy"), ("They played all", " day"), ("The cat saw a big", " dog"),
         ("The bird flew up into the", " sky"), ("The little girl was very", " sad")]
with open(sys.argv[1], "w") as f:
    for p, a in pairs:
        f.write(json.dumps({"prompt": p, "answer": a}) + "\n")
PY
train=("$t2" train-expert --model "$bin" --tokenizer "$tok" --decomposition "$tmp/svd.safetensors"
       --data "$tmp/pairs.jsonl" --threads 2)
for method in reinforce ce spsa es cem; do
    expect_exit 0 "${train[@]}" --method $method --steps 4 --eval-every 2 --out "$tmp/$method.safetensors"
    out=$("$t2" expert info "$tmp/$method.safetensors")
    grep -q "task *pairs" <<<"$out" && grep -q "\"method\":\"$method\"" <<<"$out" && pass ||
        fail "train-expert $method: $out"
done
expect_exit 0 "$t2" train-expert --help
expect_message 2 "t2 train-expert: --method wants reinforce, ce, spsa, es or cem, got 'sgd'" \
    "${train[@]}" --method sgd --out "$tmp/x.safetensors"
expect_message 2 "t2 train-expert: --eval-every: wants a number from 1 to" \
    "${train[@]}" --method ce --eval-every 0 --out "$tmp/x.safetensors"
printf '{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n' >"$tmp/bad.jsonl"
expect_exit 1 "$t2" train-expert --model "$bin" --tokenizer "$tok" --decomposition "$tmp/svd.safetensors" \
    --data "$tmp/bad.jsonl" --method ce --out "$tmp/x.safetensors"
grep -q "bad.jsonl line 2" "$tmp/err" && pass || fail "a bad JSONL line is not named: $(cat "$tmp/err")"
rm -f "$tmp"/straight.safetensors* "$tmp"/killed.safetensors*
"${train[@]}" --method ce --steps 300 --eval-every 1 --lr 0.01 --out "$tmp/straight.safetensors" 2>/dev/null ||
    fail "train-expert, uninterrupted"
"${train[@]}" --method ce --steps 300 --eval-every 1 --lr 0.01 --out "$tmp/killed.safetensors" 2>/dev/null &
run=$!
for _ in $(seq 600); do [[ -e "$tmp/killed.safetensors.checkpoint" ]] && break; sleep 0.01; done
kill -KILL $run 2>/dev/null; wait $run 2>/dev/null
if [[ -e "$tmp/killed.safetensors" ]]; then
    echo "note: train-expert finished before it could be killed; resume not exercised" >&2
else
    expect_exit 1 "${train[@]}" --method spsa --steps 300 --out "$tmp/killed.safetensors"
    grep -q "written by another run" "$tmp/err" && pass || fail "another run's checkpoint: $(cat "$tmp/err")"
    "${train[@]}" --method ce --steps 300 --eval-every 1 --lr 0.01 --out "$tmp/killed.safetensors" 2>"$tmp/err" ||
        fail "train-expert, resumed: $(cat "$tmp/err")"
    grep -q "resuming from" "$tmp/err" && pass || fail "train-expert did not resume: $(cat "$tmp/err")"
fi
cmp -s "$tmp/straight.safetensors" "$tmp/killed.safetensors" && pass || fail "a resumed run wrote another expert"

# export: the model with an expert applied, as GGUF; read back by t2 it gives the logits of the
# model running the expert and generates; a mixture and F16 too; bad flags and files refused.
expect_exit 0 "$t2" export --help
for option in --model --decomposition --expert --experts --alpha --out --type --tokenizer --threads; do
    grep -q -- "^  $option\b" "$tmp/out" && pass || fail "'t2 export --help' omits $option"
done
export_cmd=("$t2" export --model "$bin" --tokenizer "$tok" --decomposition "$tmp/svd.safetensors")
rm -f "$tmp"/exported*.gguf
expect_exit 0 "${export_cmd[@]}" --expert "$tmp/ramp.safetensors" --out "$tmp/exported.gguf"
grep -q "wrote .*exported.gguf" "$tmp/err" && pass || fail "export report: $(cat "$tmp/err")"
"$t2" logits --model "$tmp/exported.gguf" --tokens 1,403,407 --all --out "$tmp/exported.npy" || fail "logits of the export"
/usr/bin/python3 - "$tmp" <<'PY' && pass || fail "the export's logits differ from the expert's"
import sys, numpy as np
tmp = sys.argv[1]
got, want = np.load(f"{tmp}/exported.npy"), np.load(f"{tmp}/ramp.npy")
assert got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-4), abs(got - want).max()
PY
out=$("$t2" info --model "$tmp/exported.gguf")
grep -q "format *gguf v3" <<<"$out" && grep -q "tokenizer *embedded" <<<"$out" && pass || fail "info of the export: $out"
expect_exit 0 "$t2" generate --model "$tmp/exported.gguf" --temperature 0 --steps 20
[[ -s "$tmp/out" ]] && pass || fail "generate from the export printed nothing"
expect_exit 0 "${export_cmd[@]}" --expert "$tmp/ones.safetensors" --type f16 --out "$tmp/exported_f16.gguf"
out=$("$t2" generate --model "$tmp/exported_f16.gguf" --temperature 0 --steps 40 2>/dev/null)
[[ $out == "$story"* ]] && pass || fail "greedy text of the identity expert exported as F16: $out"
expect_exit 0 "${export_cmd[@]}" --experts "$tmp/ones.safetensors,$tmp/ramp.safetensors" --alpha 0.25,0.75 \
    --out "$tmp/exported_mixture.gguf"
expect_exit 0 "$t2" generate --model "$tmp/exported_mixture.gguf" --temperature 0 --steps 8
expect_message 2 "t2 export: --type wants f32 or f16, got 'q8_0'" \
    "${export_cmd[@]}" --expert "$tmp/ramp.safetensors" --type q8_0 --out "$tmp/exported_bad.gguf"
expect_message 2 "t2 export: --experts needs --alpha" \
    "${export_cmd[@]}" --experts "$tmp/ones.safetensors,$tmp/ramp.safetensors" --out "$tmp/exported_bad.gguf"
expect_message 2 "t2 export: --experts names 2 experts but --alpha gives 1 weights" \
    "${export_cmd[@]}" --experts "$tmp/ones.safetensors,$tmp/ramp.safetensors" --alpha 1 --out "$tmp/exported_bad.gguf"
expect_message 2 "t2 export: --alpha wants comma-separated non-negative weights, got '-0.5'" \
    "${export_cmd[@]}" --experts "$tmp/ones.safetensors,$tmp/ramp.safetensors" --alpha 1,-0.5 --out "$tmp/exported_bad.gguf"
expect_message 2 "got 'nan'" \
    "${export_cmd[@]}" --experts "$tmp/ones.safetensors,$tmp/ramp.safetensors" --alpha nan,1 --out "$tmp/exported_bad.gguf"
expect_message 2 "t2 export: --expert and --experts do not go together" \
    "${export_cmd[@]}" --expert "$tmp/ones.safetensors" --experts "$tmp/ones.safetensors" --alpha 1 --out "$tmp/exported_bad.gguf"
expect_message 2 "t2 export: give --expert FILE" "${export_cmd[@]}" --out "$tmp/exported_bad.gguf"
expect_message 1 "another model" "${export_cmd[@]}" --expert "$tmp/foreign.safetensors" --out "$tmp/exported_bad.gguf"
expect_message 1 "trained with rescaling, the mixture runs without" \
    "${export_cmd[@]}" --experts "$tmp/ramp.safetensors,$tmp/half.safetensors" --alpha 1,1 --out "$tmp/exported_bad.gguf"
[[ ! -e "$tmp/exported_bad.gguf" ]] && pass || fail "a refused export left a file"

# t2 adapt: two passes over the experts train-expert wrote above. Few-shot CEM on the pairs
# answers them, scores the answers and writes the mixture it found as an expert; the
# prompt-based dispatcher answers one prompt; flags that do not go together are refused.
adapt=("$t2" adapt --model "$bin" --tokenizer "$tok" --decomposition "$tmp/svd.safetensors"
       --experts "$tmp/ce.safetensors,$tmp/spsa.safetensors" --threads 2 --steps 4)
expect_exit 0 "${adapt[@]}" --dispatch fewshot --shots "$tmp/pairs.jsonl" --iterations 2 \
    --prompts "$tmp/pairs.jsonl" --save-mixture "$tmp/mixture.safetensors"
grep -q "^accuracy [0-9]*/10 (base model [0-9]*/10)$" "$tmp/out" && grep -q "decision few-shot, alpha [0-9.]*,[0-9.]*;" "$tmp/out" && pass ||
    fail "adapt fewshot: $(cat "$tmp/out")"
out=$("$t2" expert info "$tmp/mixture.safetensors")
grep -q "few-shot cem" <<<"$out" && pass || fail "the saved mixture: $out"
expect_exit 0 "${adapt[@]}" --dispatch prompt --label-tokens 4 --prompt "Once upon a time"
grep -q "^  decision " "$tmp/out" && grep -q "^  answer: " "$tmp/out" && pass || fail "adapt prompt: $(cat "$tmp/out")"
expect_exit 0 "$t2" adapt --help
expect_message 2 "t2 adapt: --dispatch wants prompt, cls, fewshot or router, got 'mind-reading'" \
    "${adapt[@]}" --dispatch mind-reading --prompt "x"
expect_message 2 "t2 adapt: --dispatch cls needs --cls-expert FILE" "${adapt[@]}" --dispatch cls --prompt "x"
expect_message 2 "t2 adapt: give --prompt TEXT or --prompts FILE.jsonl" "${adapt[@]}" --dispatch prompt
expect_message 1 "another model" "$t2" adapt --model "$bin" --tokenizer "$tok" --decomposition "$tmp/svd.safetensors" \
    --experts "$tmp/foreign.safetensors" --dispatch prompt --prompt "x"

# t2 train-router: a router over two experts from one prompt file each; t2 adapt routes with
# it, and refuses it for a library in another order.
printf '{"prompt": "Tom and Sam went to the park to play", "answer": "."}\n{"prompt": "The dog ran after the ball", "answer": "."}\n{"prompt": "Sue found a shiny red stone", "answer": "."}\n' >"$tmp/other.jsonl"
expect_exit 0 "$t2" train-router --model "$bin" --tokenizer "$tok" --decomposition "$tmp/svd.safetensors" \
    --experts "$tmp/ce.safetensors,$tmp/spsa.safetensors" --data "$tmp/pairs.jsonl,$tmp/other.jsonl" --steps 20 \
    --out "$tmp/router.safetensors"
grep -q "^wrote .*router.safetensors: held-out accuracy" "$tmp/out" && pass || fail "train-router: $(cat "$tmp/out")"
expect_exit 0 "${adapt[@]}" --dispatch router --router "$tmp/router.safetensors" --prompt "Once upon a time"
grep -q "^  decision router, alpha [01]\.[0-9]*,[01]\.[0-9]*;" "$tmp/out" && pass || fail "adapt router: $(cat "$tmp/out")"
expect_message 1 "trained for another expert library" "$t2" adapt --model "$bin" --tokenizer "$tok" \
    --decomposition "$tmp/svd.safetensors" --experts "$tmp/spsa.safetensors,$tmp/ce.safetensors" \
    --dispatch router --router "$tmp/router.safetensors" --prompt "x"
expect_message 2 "t2 train-router: --experts names 2 files but --data 1" "$t2" train-router --model "$bin" \
    --tokenizer "$tok" --decomposition "$tmp/svd.safetensors" --experts "$tmp/ce.safetensors,$tmp/spsa.safetensors" \
    --data "$tmp/pairs.jsonl" --out "$tmp/router2.safetensors"

echo "$passed passed, $failures failed"
[[ $failures -eq 0 ]]

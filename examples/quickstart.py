# Convert a teacher, generate with a constant-size cache, save, load back (README "Python API").
# python examples/quickstart.py [TEACHER] [OUT_DIR]
import sys

import lizardlm

teacher_name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"  # or a hub id, a local dir, a .gguf
out_dir = sys.argv[2] if len(sys.argv) > 2 else "lizard-smollm2"

teacher, tokenizer = lizardlm.load_teacher(teacher_name)
model = lizardlm.convert(teacher, lizardlm.LizardConfig(window_size=64, num_meta_tokens=4))  # untrained
ids = tokenizer("The history of Paris", return_tensors="pt").input_ids
cache = lizardlm.LizardCache.for_model(model)
out = model.generate(ids, cache=cache, max_new_tokens=16, do_sample=False)
print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
print(f"cache after {out.shape[1]} tokens: {cache.nbytes() / 2**20:.2f} MiB (the same at any length)")
batch = tokenizer(["The history of Paris", "Lizards"], return_tensors="pt", padding=True, padding_side="left")
out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print(tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True))  # each as if alone

model.save_pretrained(out_dir)  # config, safetensors, and remote code for trust_remote_code=True
tokenizer.save_pretrained(out_dir)  # so that `lizardlm generate --model OUT_DIR` can encode prompts
model = lizardlm.load(out_dir)  # or a run directory of `lizardlm linearize`

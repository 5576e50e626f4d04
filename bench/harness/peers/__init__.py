"""The benchmark's peers: the same ONNX model served by other frameworks, one small file
each. Each runs only in its own virtual environment (bench/.venvs/<peer>/, built by
``make bench-venvs``), started by ``bench.harness.servers``; the harness never imports
them. Every peer reads the model directory from BENCH_MODEL_DIR, runs onnxruntime with
one thread, and answers the softmax of the logits; none runs a defense.
"""

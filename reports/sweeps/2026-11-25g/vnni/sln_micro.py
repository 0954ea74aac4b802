import time, numpy as np, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
H=384; rng=np.random.default_rng(0)
gamma, beta, bias = (nh.from_array(rng.standard_normal(H).astype(np.float32), n) for n in ("g","b","bias"))
def model(kind):
    x = [h.make_tensor_value_info("x", T.FLOAT, [1,"s",H]), h.make_tensor_value_info("r", T.FLOAT, [1,"s",H])]
    if kind == "sln": nodes=[h.make_node("SkipLayerNormalization", ["x","r","g","b"], ["y"], domain="com.microsoft", epsilon=1e-12)]
    elif kind == "sln-bias": nodes=[h.make_node("SkipLayerNormalization", ["x","r","g","b","bias"], ["y"], domain="com.microsoft", epsilon=1e-12)]
    else: nodes=[h.make_node("Add", ["x","r"], ["s"]), h.make_node("LayerNormalization", ["s","g","b"], ["y"], axis=-1, epsilon=1e-12)]
    g = h.make_graph(nodes, "g", x, [h.make_tensor_value_info("y", T.FLOAT, None)], [gamma, beta, bias])
    return h.make_model(g, ir_version=9, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)]).SerializeToString()
o = ort.SessionOptions(); o.intra_op_num_threads = 1
for kind in ("add+ln", "sln", "sln-bias"):
    s = ort.InferenceSession(model(kind), o, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"])
    f = {"x": rng.standard_normal((1,25,H)).astype(np.float32), "r": rng.standard_normal((1,25,H)).astype(np.float32)}
    for _ in range(100): s.run(None, f)
    t=[]; 
    for _ in range(2000): a=time.perf_counter_ns(); s.run(None, f); t.append(time.perf_counter_ns()-a)
    print(kind, np.median(t)/1e3, "us")

#if canImport(ExecuTorch)
  import ExecuTorch
  import Foundation
  import QwenMobileKit

  /// A `.pte` bundle (xnnpack or coreml-pte recipe) through ExecuTorch's Swift `Module`, driven as qwen-bench does:
  /// prefill chunks through `forward`, each generated token through `decode_token`, both methods over one state.
  ///
  /// The state is shared only if both methods run on the same planned-memory arenas (the program was exported with
  /// shared mutable buffers; C++ `Module(..., share_memory_arenas=true)`, which qwen-bench reproduces by hand). An
  /// ExecuTorch `Module` that gives each method its own arenas makes `decode_token` start from an empty state, and
  /// the output would look plausible and be wrong. So loading runs a probe: the logits of [a, b] then `decode_token`
  /// (c) must match `forward` over [a, b, c]; if not, loading fails with a message saying what to link instead.
  public final class ExecuTorchEngine: InferenceEngine {
    public let planner: EnginePlanner
    let module: Module
    public var runtimeDescription: String { "ExecuTorch (\(planner.manifest.backend))" }

    public init(bundle: BundleFolder, probeSharedState: Bool = true) throws {
      let manifest = bundle.manifest
      guard !manifest.isCoreMLPackage else {
        throw BundleError("\(bundle.url.path): a Core ML package bundle; open it with the Core ML engine")
      }
      planner = try EnginePlanner(manifest: manifest)
      module = Module(filePath: bundle.file(manifest.programFile).path, loadMode: .mmap)
      let names = try module.methodNames()
      for method in ["forward", "decode_token"] where !names.contains(method) {
        throw BundleError("\(manifest.programFile): no method '\(method)' (methods: \(names.sorted()))")
      }
      try module.load("forward")
      try module.load("decode_token")
      if probeSharedState { try checkSharedState() }
    }

    public func execute(_ step: PlannedStep) throws -> [Float] {
      var logits: [Float] = []
      for call in step.calls {
        let inputs: [ValueConvertible] = try call.inputs.map { input in
          guard let values = input.values else { throw BundleError("a .pte input without values: \(input.name)") }
          switch input.dtype {
          case "int64": return Tensor<Int64>(values.map { Int64($0) }, shape: input.shape)
          case "int32": return Tensor<Int32>(values.map { Int32($0) }, shape: input.shape)
          default: throw BundleError("input \(input.name): dtype \(input.dtype) is not an id type")
          }
        }
        let outputs = try module.execute(call.method, inputs)
        guard let first = outputs.first, let tensor: Tensor<Float> = first.tensor() else {
          throw BundleError("method \(call.method): output 0 is not a float32 tensor")
        }
        let all = tensor.scalars()
        let vocab = planner.manifest.vocabSize
        guard all.count >= vocab, all.count % vocab == 0 else {
          throw BundleError("method \(call.method): \(all.count) logits, not a multiple of vocab \(vocab)")
        }
        logits = Array(all.suffix(vocab))  // [1, T, vocab] -> the last position
      }
      return logits
    }

    func checkSharedState() throws {
      let ids = Array((planner.manifest.samplePromptIDs ?? [1, 2, 3]).prefix(3))
      guard ids.count == 3 else { return }
      var split: [Float] = []
      for step in try planner.prefill(Array(ids.prefix(2)), start: 0) { split = try execute(step) }
      split = try execute(try planner.decode(ids[2], position: 2))
      var whole: [Float] = []
      for step in try planner.prefill(ids, start: 0) { whole = try execute(step) }
      let scale = max(1, whole.map { abs($0) }.max() ?? 1)
      let diff = zip(split, whole).map { abs($0 - $1) }.max() ?? .infinity
      if !(diff <= 1e-2 * scale) {
        throw BundleError(
          "forward and decode_token do not share the model state in this ExecuTorch Module (max |Δlogit| \(diff)): "
            + "link an ExecuTorch build whose Module shares memory arenas between methods (README, ExecuTorch on iOS)")
      }
    }
  }
#endif

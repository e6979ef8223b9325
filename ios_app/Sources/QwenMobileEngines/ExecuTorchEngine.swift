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
  /// (c) must match `forward` over [a, b, c]. If they do not, every token goes through `forward` instead (its
  /// dynamic T takes T = 1 with the same inputs; one method, one state; the host test
  /// tests/host/test_decode_through_forward.py shows the logits equal decode_token's), the probe runs again on that
  /// path, and `runtimeDescription` says so: correct, if slower than the static T = 1 method.
  public final class ExecuTorchEngine: InferenceEngine {
    /// One method call: what Module.execute does on a device, a fake in the Linux tests of the probe.
    typealias Run = (_ method: String, _ inputs: [PlannedInput]) throws -> [Float]

    public let planner: EnginePlanner
    let run: Run
    /// The method a planned decode step runs: `decode_token`, or `forward` when this Module keeps one state per method.
    public private(set) var decodeMethod = Manifest.decodeMethod
    public var runtimeDescription: String {
      let note = ", decode through forward: this Module does not share state between methods"
      return "ExecuTorch (\(planner.manifest.backend))" + (decodeMethod == Manifest.prefillMethod ? note : "")
    }

    public convenience init(bundle: BundleFolder, probeSharedState: Bool = true) throws {
      let manifest = bundle.manifest
      guard !manifest.isCoreMLPackage else {
        throw BundleError("\(bundle.url.path): a Core ML package bundle; open it with the Core ML engine")
      }
      let module = Module(filePath: bundle.file(manifest.programFile).path, loadMode: .mmap)
      let names = try module.methodNames()
      for method in [Manifest.prefillMethod, Manifest.decodeMethod] where !names.contains(method) {
        throw BundleError("\(manifest.programFile): no method '\(method)' (methods: \(names.sorted()))")
      }
      try module.load(Manifest.prefillMethod)
      try module.load(Manifest.decodeMethod)
      let vocab = manifest.vocabSize
      try self.init(planner: try EnginePlanner(manifest: manifest), probeSharedState: probeSharedState) {
        method, inputs in
        try ExecuTorchEngine.execute(module, method: method, inputs: inputs, vocab: vocab)
      }
    }

    init(planner: EnginePlanner, probeSharedState: Bool, run: @escaping Run) throws {
      self.planner = planner
      self.run = run
      if probeSharedState { try checkSharedState() }
    }

    public func execute(_ step: PlannedStep) throws -> [Float] {
      var logits: [Float] = []
      for call in step.calls {
        logits = try run(call.method == Manifest.decodeMethod ? decodeMethod : call.method, call.inputs)
      }
      return logits
    }

    static func execute(_ module: Module, method: String, inputs: [PlannedInput], vocab: Int) throws -> [Float] {
      let values: [ValueConvertible] = try inputs.map { input in
        guard let ids = input.values else { throw BundleError("a .pte input without values: \(input.name)") }
        switch input.dtype {
        case "int64": return Tensor<Int64>(ids.map { Int64($0) }, shape: input.shape)
        case "int32": return Tensor<Int32>(ids.map { Int32($0) }, shape: input.shape)
        default: throw BundleError("input \(input.name): dtype \(input.dtype) is not an id type")
        }
      }
      let outputs = try module.execute(method, values)
      guard let first = outputs.first, let tensor: Tensor<Float> = first.tensor() else {
        throw BundleError("method \(method): output 0 is not a float32 tensor")
      }
      let all = tensor.scalars()
      guard all.count >= vocab, all.count % vocab == 0 else {
        throw BundleError("method \(method): \(all.count) logits, not a multiple of vocab \(vocab)")
      }
      return Array(all.suffix(vocab))  // [1, T, vocab] -> the last position
    }

    func checkSharedState() throws {
      let shared = try decodeAgreesWithPrefill()
      guard !shared.agrees else { return }
      decodeMethod = Manifest.prefillMethod
      let single = try decodeAgreesWithPrefill()
      if !single.agrees {
        throw BundleError(
          "decode does not continue the prefill's state in this ExecuTorch Module, through decode_token (max |Δlogit| "
            + "\(shared.diff)) or through forward (\(single.diff)): the program or the runtime is broken")
      }
    }

    /// Logits of prefill [a, b] then one decode step (c) against prefill [a, b, c], on the manifest's sample prompt.
    func decodeAgreesWithPrefill() throws -> (agrees: Bool, diff: Float) {
      let ids = Array((planner.manifest.samplePromptIDs ?? [1, 2, 3]).prefix(3))
      guard ids.count == 3 else { return (true, 0) }
      var split: [Float] = []
      for step in try planner.prefill(Array(ids.prefix(2)), start: 0) { split = try execute(step) }
      split = try execute(try planner.decode(ids[2], position: 2))
      var whole: [Float] = []
      for step in try planner.prefill(ids, start: 0) { whole = try execute(step) }
      let scale = max(1, whole.map { abs($0) }.max() ?? 1)
      let diff = zip(split, whole).map { abs($0 - $1) }.max() ?? .infinity
      return (diff <= 1e-2 * scale, diff)
    }
  }
#endif

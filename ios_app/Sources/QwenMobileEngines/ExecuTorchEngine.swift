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
  ///
  /// A bundle with a `vision` section also takes images (ImageInferenceEngine; GenerationSession drives the steps of
  /// runtime/CONTRACT.md, "Images", as qwen-bench does): `encode_image_<H>x<W>`, `embed_tokens`, `prefill_embeddings`
  /// and `decode_token_rope`, each one Module call. Only compiled and checked on Linux (against Stubs/ExecuTorch); it
  /// runs on an Apple device.
  public final class ExecuTorchEngine: InferenceEngine, ImageInferenceEngine {
    /// One method call: what Module.execute does on a device, a fake in the Linux tests of the probe.
    typealias Run = (_ method: String, _ inputs: [PlannedInput]) throws -> [Float]
    /// One image-method call with ExecuTorch values in and every float of output 0 out (a fake in the Linux tests).
    typealias Call = (_ method: String, _ inputs: [ValueConvertible]) throws -> [Float]

    public let planner: EnginePlanner
    let run: Run
    let call: Call?
    /// The method whose state the last image-prompt call wrote (see prefillEmbeddings).
    private var imageStateMethod: String?
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
      try self.init(
        planner: try EnginePlanner(manifest: manifest), probeSharedState: probeSharedState,
        call: { method, inputs in
          let outputs = try module.execute(method, inputs)
          guard let first = outputs.first, let tensor: Tensor<Float> = first.tensor() else {
            throw BundleError("method \(method): output 0 is not a float32 tensor")
          }
          return tensor.scalars()
        }
      ) { method, inputs in
        try ExecuTorchEngine.execute(module, method: method, inputs: inputs, vocab: vocab)
      }
    }

    init(planner: EnginePlanner, probeSharedState: Bool, call: Call? = nil, run: @escaping Run) throws {
      self.planner = planner
      self.run = run
      self.call = call
      if probeSharedState { try checkSharedState() }
    }

    // MARK: images (CONTRACT.md "Images"; the same calls as qwen-bench's Model::encode_image ... decode_rope)

    private func imageCall(_ method: String, _ inputs: [ValueConvertible]) throws -> [Float] {
      guard planner.manifest.vision != nil, let call else {
        throw BundleError("\(planner.manifest.source): no vision section: this bundle takes no images")
      }
      return try call(method, inputs)
    }

    private func lastLogits(_ all: [Float], _ method: String) throws -> [Float] {
      let vocab = planner.manifest.vocabSize
      guard all.count >= vocab, all.count % vocab == 0 else {
        throw BundleError("method \(method): \(all.count) logits, not a multiple of vocab \(vocab)")
      }
      return Array(all.suffix(vocab))
    }

    public func encodeImage(_ rgb: [UInt8], size: ImageSizeSpec) throws -> [Float] {
      try imageCall(size.method, [Tensor<UInt8>(rgb, shape: [size.height, size.width, 3])])
    }

    public func embed(_ ids: [Int]) throws -> [Float] {
      try imageCall(VisionSpec.embedMethod, [Tensor<Int64>(ids.map { Int64($0) }, shape: [1, ids.count])])
    }

    public func prefillEmbeddings(_ embeds: [Float], start: Int, rope: [Int]) throws -> [Float] {
      let n = rope.count / 3
      // A Module without shared arenas (decodeMethod fell back to forward) keeps one state per method: an image
      // prompt then lives in prefill_embeddings' state alone, so it must start the sequence or continue one that
      // only prefill_embeddings wrote.
      if decodeMethod == Manifest.prefillMethod, start > 0, imageStateMethod != VisionSpec.prefillMethod {
        throw BundleError(
          "this ExecuTorch Module does not share state between methods: an image must start the conversation "
            + "(reset it first)")
      }
      let all = try imageCall(
        VisionSpec.prefillMethod,
        [
          Tensor<Float>(embeds, shape: [1, n, embeds.count / max(n, 1)]),
          Tensor<Int64>((start..<(start + n)).map { Int64($0) }, shape: [n]),
          Tensor<Int64>(rope.map { Int64($0) }, shape: [3, n]),
        ])
      imageStateMethod = VisionSpec.prefillMethod
      return try lastLogits(all, VisionSpec.prefillMethod)
    }

    public func decodeRope(_ token: Int, slot: Int, rope: Int) throws -> [Float] {
      if decodeMethod == Manifest.prefillMethod {
        // No shared arenas: the one-token step goes through prefill_embeddings too (its own state), as text decode
        // goes through forward; embed_tokens holds no state.
        return try prefillEmbeddings(try embed([token]), start: slot, rope: [rope, rope, rope])
      }
      let all = try imageCall(
        VisionSpec.decodeMethod,
        [
          Tensor<Int64>([Int64(token)], shape: [1, 1]), Tensor<Int64>([Int64(slot)], shape: [1]),
          Tensor<Int64>([Int64(rope)], shape: [1]),
        ])
      return try lastLogits(all, VisionSpec.decodeMethod)
    }

    public func execute(_ step: PlannedStep) throws -> [Float] {
      imageStateMethod = nil
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

#if canImport(CoreGraphics)
  import CoreGraphics
  import QwenMobileKit

  extension ImageRGB {
    /// A decoded image -> the bundle's input: scaled by Core Graphics (high-quality interpolation) to the size the
    /// contract's rule picks, drawn over white (transparency as runtime/images.py composites it), packed to RGB.
    /// Row 0 of a bitmap context's memory is the image's top row, as encode_image_<H>x<W> expects.
    public static func forBundle(_ image: CGImage, vision: VisionSpec) throws -> ImageRGB {
      let size = try vision.chooseSize(height: image.height, width: image.width)
      let (w, h) = (size.width, size.height)
      var rgbx = [UInt8](repeating: 255, count: w * h * 4)
      let drawn = rgbx.withUnsafeMutableBytes { buffer -> Bool in
        guard
          let space = CGColorSpace(name: CGColorSpace.sRGB),
          let context = CGContext(
            data: buffer.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4, space: space,
            bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)
        else { return false }
        context.setFillColor(red: 1, green: 1, blue: 1, alpha: 1)
        context.fill(CGRect(x: 0, y: 0, width: w, height: h))
        context.interpolationQuality = .high
        context.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
        return true
      }
      guard drawn else { throw BundleError("cannot create a \(w)x\(h) RGB drawing context") }
      return try ImageRGB(rgbx: rgbx, width: w, height: h)
    }
  }
#endif

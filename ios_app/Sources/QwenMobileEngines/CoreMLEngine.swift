#if canImport(CoreML)
  import CoreML
  import Foundation
  import QwenMobileKit

  /// Which processors Core ML may use; the benchmark screen lets the user pick, results record it.
  public enum ComputeUnitsChoice: String, CaseIterable {
    case all
    case cpuOnly
    case cpuAndGPU
    case cpuAndNeuralEngine

    var mlValue: MLComputeUnits {
      switch self {
      case .all: return .all
      case .cpuOnly: return .cpuOnly
      case .cpuAndGPU: return .cpuAndGPU
      case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
      }
    }
  }

  /// A `coreml` bundle (stateful multifunction `.mlpackage`, iOS 18) run the way export/coreml/runner.py runs it:
  /// per package one MLModel per function (`MLModelConfiguration.functionName`), one MLState shared by the
  /// functions, the "io" layout's delta-net state kept host-side and passed in and out, packages chained by
  /// `hidden`/`hidden_out` when the model is split.
  ///
  /// A bundle with a vision section also takes images (ImageInferenceEngine; GenerationSession drives
  /// runtime/CONTRACT.md's steps, "Images in Core ML bundles"): `encode_image_<H>x<W>` in vision.mlpackage, `embed`
  /// padded to the chunk, `prefill_embeddings` in full chunks and `decode_embeddings` for the rest, `decode_rope`,
  /// every stateful one over the same MLState as `prefill`/`decode`. The image functions' MLModels are loaded on the
  /// first image, so a text-only chat costs what it did before.
  public final class CoreMLEngine: InferenceEngine, ImageInferenceEngine {
    public let planner: EnginePlanner
    public let computeUnits: ComputeUnitsChoice
    /// How the functions' state is shared: "one MLState for both functions", or copied if Core ML refuses that
    /// (undocumented either way; scripts/verify_coreml_on_mac.py makes the same choice and reports it).
    public private(set) var stateSharing = "one MLState for both functions"

    final class Package {
      let file: String
      /// The compiled package, for the functions loaded on first use (the image functions).
      let compiled: URL?
      var models: [String: MLModel]  // "prefill", "decode", then the image functions once used
      let stateNames: [String]
      var shared: MLState
      var perFunction: [String: MLState]  // stateful functions only
      var lastFunction: String?

      init(file: String, compiled: URL? = nil, models: [String: MLModel], stateNames: [String]) {
        self.file = file
        self.compiled = compiled
        self.models = models
        self.stateNames = stateNames
        shared = models["decode"]!.makeState()
        perFunction = models.mapValues { $0.makeState() }
      }
    }

    /// One function call of one package: what MLModel.prediction(from:using:options:) does on a device, a fake in
    /// the Linux tests of the chaining and host-state logic below.
    typealias Predict = (_ package: String, _ function: String, _ inputs: MLFeatureProvider) throws -> MLFeatureProvider

    var packages: [String: Package] = [:]
    var predictCall: Predict = { _, _, _ in throw BundleError("CoreMLEngine: no models loaded") }
    /// The "io" layout's delta-net state per package (gdn_conv, gdn_rec), carried from one call's outputs to the next
    /// call's inputs.
    var host: [String: [String: MLMultiArray]] = [:]
    var copyStates = false
    /// The compiled vision package and its functions (loaded on first use); nil without a vision section.
    var visionCompiled: URL?
    var visionModels: [String: MLModel] = [:]

    public var runtimeDescription: String { "Core ML (\(computeUnits.rawValue))" }

    init(planner: EnginePlanner, computeUnits: ComputeUnitsChoice, predict: Predict? = nil) {
      self.planner = planner
      self.computeUnits = computeUnits
      if let predict { predictCall = predict }
    }

    /// Compiles (once per bundle, cached under `cacheDirectory`) and loads every package of the bundle.
    public static func load(bundle: BundleFolder, computeUnits: ComputeUnitsChoice, cacheDirectory: URL) async throws
      -> CoreMLEngine
    {
      let manifest = bundle.manifest
      guard manifest.isCoreMLPackage else {
        throw BundleError("\(bundle.url.path): recipe \(manifest.recipeName) is not a Core ML package bundle")
      }
      let planner = try EnginePlanner(manifest: manifest)
      var packages: [String: Package] = [:]
      for spec in manifest.packages {
        let compiled = try await compiledModel(bundle: bundle, file: spec.file, cacheDirectory: cacheDirectory)
        var models: [String: MLModel] = [:]
        for function in ["prefill", "decode"] {
          models[function] = try loadFunction(compiled, function, computeUnits: computeUnits)
        }
        packages[spec.file] = Package(
          file: spec.file, compiled: compiled, models: models,
          stateNames: planner.coreMLStates(package: spec.file).map(\.name))
      }
      let engine = CoreMLEngine(planner: planner, computeUnits: computeUnits)
      engine.packages = packages
      if let images = manifest.coreMLImages {
        engine.visionCompiled = try await compiledModel(
          bundle: bundle, file: images.visionPackage, cacheDirectory: cacheDirectory)
      }
      engine.predictCall = { [unowned engine] file, function, inputs in
        try engine.predictOnDevice(file, function, inputs)
      }
      return engine
    }

    /// One function call on the device: the vision package's and `embed` without a state, every other function over
    /// its package's MLState. A function's MLModel is loaded the first time it runs.
    func predictOnDevice(_ file: String, _ function: String, _ inputs: MLFeatureProvider) throws -> MLFeatureProvider {
      if let images = planner.manifest.coreMLImages, file == images.visionPackage {
        guard images.encoders[function] != nil, let compiled = visionCompiled else {
          throw BundleError("\(file) has no function \(function)")
        }
        let model =
          try visionModels[function] ?? CoreMLEngine.loadFunction(compiled, function, computeUnits: computeUnits)
        visionModels[function] = model
        return try model.prediction(from: inputs, options: MLPredictionOptions())
      }
      guard let package = packages[file] else { throw BundleError("no package \(file) in this bundle") }
      if package.models[function] == nil {
        guard let compiled = package.compiled, planner.manifest.coreMLImages?.io[file]?[function] != nil else {
          throw BundleError("package \(file) has no function \(function)")
        }
        let model = try CoreMLEngine.loadFunction(compiled, function, computeUnits: computeUnits)
        package.models[function] = model
        if !CoreMLImageFunctions.statelessFunctions.contains(function) {
          let state = model.makeState()
          if copyStates, let last = package.lastFunction ?? package.perFunction.keys.first {
            try copyState(from: package.perFunction[last]!, to: state, names: package.stateNames)
          }
          package.perFunction[function] = state
        }
      }
      let model = package.models[function]!
      if CoreMLImageFunctions.statelessFunctions.contains(function) {
        return try model.prediction(from: inputs, options: MLPredictionOptions())
      }
      return try predict(model, inputs, package, function: function)
    }

    /// One function of a compiled multifunction package as its own MLModel.
    static func loadFunction(_ compiled: URL, _ function: String, computeUnits: ComputeUnitsChoice) throws -> MLModel {
      let config = MLModelConfiguration()
      config.computeUnits = computeUnits.mlValue
      config.functionName = function
      return try MLModel(contentsOf: compiled, configuration: config)
    }

    /// `.mlpackage` -> `.mlmodelc`; compiling a 1 GB package takes long, so the result is kept per bundle hash.
    static func compiledModel(bundle: BundleFolder, file: String, cacheDirectory: URL) async throws -> URL {
      let fm = FileManager.default
      let target = cacheDirectory.appendingPathComponent(bundle.manifest.bundleHash)
        .appendingPathComponent(file.replacingOccurrences(of: ".mlpackage", with: ".mlmodelc"))
      if fm.fileExists(atPath: target.path) { return target }
      let temporary = try await MLModel.compileModel(at: bundle.file(file))
      try fm.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
      try fm.moveItem(at: temporary, to: target)
      return target
    }

    public func execute(_ step: PlannedStep) throws -> [Float] {
      var hidden: MLMultiArray?
      var logits: [Float]?
      for call in step.calls {
        guard let file = call.package else { throw BundleError("a Core ML call without a package") }
        try prepareHostState(file, start: step.startPosition)
        var features: [String: Any] = [:]
        for input in call.inputs {
          switch input.source {
          case .tokens, .positions:
            features[input.name] = try CoreMLEngine.intArray(input.values ?? [], shape: input.shape, dtype: input.dtype)
          case .hidden:
            guard let h = hidden else { throw BundleError("package \(file): no hidden_out from the previous package") }
            features[input.name] = h
          case .hostState(let buffer):
            guard let value = host[file]?[buffer] else { throw BundleError("package \(file): no host state \(buffer)") }
            features[input.name] = value
          }
        }
        let out = try predictCall(file, call.method, try MLDictionaryFeatureProvider(dictionary: features))
        try collect(out, call.outputs, file: file, function: call.method, logits: &logits, hidden: &hidden)
      }
      guard let result = logits else {
        throw BundleError("the last package returned no logits; is the chain complete?")
      }
      return result
    }

    /// The "io" layout's delta-net state of one package before a call at `start`: fresh zeros at position 0 (the
    /// graph zeroes it there too; fresh zeros keep the host copy honest, as runner.py does) or on the first call.
    func prepareHostState(_ file: String, start: Int) throws {
      guard start == 0 || host[file] == nil else { return }
      var zeros: [String: MLMultiArray] = [:]
      for buffer in planner.hostStateBuffers(package: file) {
        zeros[buffer.name] = try MLMultiArray(shape: buffer.shape.map { NSNumber(value: $0) }, dataType: .float32)
      }
      host[file] = zeros
    }

    /// Keeps what one package call returned: logits (the last package), hidden_out (for the next package) and the
    /// host-side delta-net state.
    func collect(
      _ out: MLFeatureProvider, _ names: [String], file: String, function: String, logits: inout [Float]?,
      hidden: inout MLMultiArray?
    ) throws {
      for name in names {
        guard let value = out.featureValue(for: name)?.multiArrayValue else {
          throw BundleError("package \(file) function \(function): no output '\(name)'")
        }
        switch name {
        case "logits": logits = try CoreMLEngine.floats(value, last: planner.manifest.vocabSize)
        case "hidden_out": hidden = value
        case "conv_out": host[file]?["gdn_conv"] = value
        case "rec_out": host[file]?["gdn_rec"] = value
        default: break
        }
      }
    }

    // MARK: images (CONTRACT.md "Images in Core ML bundles"; the calls of export/coreml/runner.py's image methods)

    func imageFunctions() throws -> CoreMLImageFunctions {
      guard let images = planner.manifest.coreMLImages else {
        throw BundleError("\(planner.manifest.source): no vision section: this bundle takes no images")
      }
      return images
    }

    /// rgb [H,W,3] bytes -> their values 0..255 as float32 [H,W,3] through vision.mlpackage's function for the size.
    public func encodeImage(_ rgb: [UInt8], size: ImageSizeSpec) throws -> [Float] {
      let images = try imageFunctions()
      guard let io = images.encoders[size.method] else {
        throw BundleError("\(images.visionPackage) has no function \(size.method)")
      }
      let input = io.inputs[0]
      let pixels = try CoreMLEngine.floatArray(rgb.map { Float($0) }, shape: input.concreteShape(tokens: 1))
      let out = try predictCall(
        images.visionPackage, size.method, try MLDictionaryFeatureProvider(dictionary: [input.name: pixels]))
      let output = io.outputs[0]
      guard let value = out.featureValue(for: output.name)?.multiArrayValue else {
        throw BundleError("\(images.visionPackage) function \(size.method): no output '\(output.name)'")
      }
      return try CoreMLEngine.values(value, shape: output.concreteShape(tokens: 1))
    }

    /// `embed` over any number of ids, C at a time (a shorter tail padded with id 0, its rows dropped: `embed` is a
    /// gather, a pad row changes no other row) -> [ids.count * hidden].
    public func embed(_ ids: [Int]) throws -> [Float] {
      let images = try imageFunctions()
      let file = planner.manifest.packages[0].file
      let function = CoreMLImageFunctions.embedFunction
      guard let io = images.io[file]?[function] else {
        throw BundleError("package \(file) has no function \(function)")
      }
      let chunk = images.chunk
      let rowWidth = io.outputs[0].concreteShape(tokens: chunk).reduce(1, *) / chunk
      var rows: [Float] = []
      for begin in stride(from: 0, to: ids.count, by: chunk) {
        let part = Array(ids[begin..<min(ids.count, begin + chunk)])
        let tokens = try CoreMLEngine.intArray(
          part + [Int](repeating: 0, count: chunk - part.count), shape: io.inputs[0].concreteShape(tokens: chunk),
          dtype: io.inputs[0].dtype)
        let out = try predictCall(
          file, function, try MLDictionaryFeatureProvider(dictionary: [io.inputs[0].name: tokens]))
        guard let value = out.featureValue(for: io.outputs[0].name)?.multiArrayValue else {
          throw BundleError("package \(file) function \(function): no output '\(io.outputs[0].name)'")
        }
        // [1, C, hidden] -> its first part.count rows
        rows += try CoreMLEngine.values(value, shape: io.outputs[0].concreteShape(tokens: chunk)).prefix(
          part.count * rowWidth)
      }
      return rows
    }

    /// embeds [n * hidden] at cache slots start..<start+n, rope [3, n] -> logits [vocab] after the last: full chunks
    /// through `prefill_embeddings`, the rest one at a time through `decode_embeddings` (nothing padded into the
    /// state), each through the whole package chain.
    public func prefillEmbeddings(_ embeds: [Float], start: Int, rope: [Int]) throws -> [Float] {
      let images = try imageFunctions()
      let n = rope.count / 3
      guard n > 0, rope.count == 3 * n, embeds.count % n == 0 else {
        throw BundleError("prefill_embeddings: \(embeds.count) values and \(rope.count) rotary positions")
      }
      let width = embeds.count / n
      // rope [3, n] -> columns begin..<end as [3, end - begin]
      func columns(_ begin: Int, _ end: Int) -> [Int] { (0..<3).flatMap { rope[($0 * n + begin)..<($0 * n + end)] } }
      var logits: [Float] = []
      var i = 0
      while n - i >= images.chunk {
        let j = i + images.chunk
        logits = try chain(
          CoreMLImageFunctions.prefillFunction, head: .embeds(Array(embeds[(i * width)..<(j * width)])),
          start: start + i, count: j - i, rope: columns(i, j))
        i = j
      }
      for k in i..<n {
        logits = try chain(
          CoreMLImageFunctions.remainderFunction, head: .embeds(Array(embeds[(k * width)..<((k + 1) * width)])),
          start: start + k, count: 1, rope: columns(k, k + 1))
      }
      return logits
    }

    /// One token at cache slot `slot` and rotary position `rope`: `decode_rope` in the first package, the later ones
    /// of a chain through `decode_embeddings` with the position in all three rows.
    public func decodeRope(_ token: Int, slot: Int, rope: Int) throws -> [Float] {
      _ = try imageFunctions()
      return try chain(CoreMLImageFunctions.ropeFunction, head: .tokens([token]), start: slot, count: 1, rope: [rope])
    }

    enum Head {
      case tokens([Int])
      case embeds([Float])
    }

    /// One step through every text package (export/coreml/runner.py `_chain`), the inputs filled by the names the
    /// manifest declares for each package's function.
    func chain(_ function: String, head: Head, start: Int, count: Int, rope: [Int]) throws -> [Float] {
      let images = try imageFunctions()
      var hidden: MLMultiArray?
      var logits: [Float]?
      for (index, package) in planner.manifest.packages.enumerated() {
        let file = package.file
        var fn = function
        var ropeValues = rope
        if index > 0 && function == CoreMLImageFunctions.ropeFunction {
          // Later packages take hidden states, not tokens: the one-token embeddings function, rows equal ([3,1]).
          fn = CoreMLImageFunctions.remainderFunction
          ropeValues = [rope[0], rope[0], rope[0]]
        }
        guard let io = images.io[file]?[fn] else { throw BundleError("package \(file) has no function \(fn)") }
        try prepareHostState(file, start: start)
        var features: [String: Any] = [:]
        for input in io.inputs {
          let shape = input.concreteShape(tokens: count)
          switch (input.name, head) {
          case ("tokens", .tokens(let ids)):
            features[input.name] = try CoreMLEngine.intArray(ids, shape: shape, dtype: input.dtype)
          case ("embeds", .embeds(let values)):
            features[input.name] = try CoreMLEngine.floatArray(values, shape: shape)
          case ("hidden", _):
            guard let h = hidden else { throw BundleError("package \(file): no hidden_out from the previous package") }
            features[input.name] = h
          case ("input_pos", _):
            features[input.name] = try CoreMLEngine.intArray(
              Array(start..<(start + count)), shape: shape, dtype: input.dtype)
          case ("rope_pos", _):
            features[input.name] = try CoreMLEngine.intArray(ropeValues, shape: shape, dtype: input.dtype)
          case ("conv_in", _), ("rec_in", _):
            let buffer = input.name == "conv_in" ? "gdn_conv" : "gdn_rec"
            guard let value = host[file]?[buffer] else { throw BundleError("package \(file): no host state \(buffer)") }
            features[input.name] = value
          default:
            throw BundleError("package \(file) function \(fn): cannot fill input '\(input.name)' here")
          }
        }
        let out = try predictCall(file, fn, try MLDictionaryFeatureProvider(dictionary: features))
        try collect(out, io.outputs.map(\.name), file: file, function: fn, logits: &logits, hidden: &hidden)
      }
      guard let result = logits else {
        throw BundleError("the last package returned no logits; is the chain complete?")
      }
      return result
    }

    func predict(_ model: MLModel, _ input: MLFeatureProvider, _ package: Package, function: String) throws
      -> MLFeatureProvider
    {
      if !copyStates {
        do {
          return try model.prediction(from: input, using: package.shared, options: MLPredictionOptions())
        } catch {
          // A state made by the other function's model refused: fall back to one state per function, copied on
          // every switch (slower, reported in results).
          copyStates = true
          stateSharing = "copied between per-function MLStates (\(error))"
          for p in packages.values {
            for fn in p.perFunction.keys { try copyState(from: p.shared, to: p.perFunction[fn]!, names: p.stateNames) }
            p.lastFunction = nil
          }
        }
      }
      if let last = package.lastFunction, last != function {
        try copyState(from: package.perFunction[last]!, to: package.perFunction[function]!, names: package.stateNames)
      }
      package.lastFunction = function
      return try model.prediction(from: input, using: package.perFunction[function]!, options: MLPredictionOptions())
    }

    func copyState(from source: MLState, to target: MLState, names: [String]) throws {
      for name in names {
        try source.withMultiArray(for: name) { src in
          try target.withMultiArray(for: name) { dst in
            guard src.count == dst.count, src.dataType == dst.dataType else {
              throw BundleError("state \(name): shapes differ between the functions' states")
            }
            src.withUnsafeBytes { from in
              dst.withUnsafeMutableBytes { to, _ in to.copyMemory(from: from) }
            }
          }
        }
      }
    }

    static func intArray(_ values: [Int], shape: [Int], dtype: String) throws -> MLMultiArray {
      guard dtype == "int32" else { throw BundleError("Core ML input dtype \(dtype): the packages take int32 ids") }
      let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .int32)
      guard array.count == values.count else {
        throw BundleError("input of shape \(shape) given \(values.count) values")
      }
      array.withUnsafeMutableBytes { raw, _ in
        let p = raw.bindMemory(to: Int32.self)
        for (i, v) in values.enumerated() { p[i] = Int32(v) }
      }
      return array
    }

    /// A float32 MLMultiArray of `shape` holding `values` in row-major order (written through its strides).
    static func floatArray(_ values: [Float], shape: [Int]) throws -> MLMultiArray {
      let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
      guard array.count == values.count else {
        throw BundleError("input of shape \(shape) given \(values.count) values")
      }
      array.withUnsafeMutableBytes { raw, strides in
        let p = raw.bindMemory(to: Float.self)
        for (i, offset) in CoreMLEngine.offsets(shape: shape, strides: strides).enumerated() { p[offset] = values[i] }
      }
      return array
    }

    /// Every value of an output in row-major order, read through its strides (Core ML may pad rows), as Float from
    /// float32, float16 or double; its shape must be the declared one.
    static func values(_ array: MLMultiArray, shape: [Int]) throws -> [Float] {
      let got = array.shape.map(\.intValue)
      guard got == shape else { throw BundleError("output of shape \(got), expected \(shape)") }
      let type = array.dataType
      return try array.withUnsafeMutableBytes { raw, strides in
        let offsets = CoreMLEngine.offsets(shape: shape, strides: strides)
        switch type {
        case .float32:
          let p = raw.bindMemory(to: Float.self)
          return offsets.map { p[$0] }
        case .float16:
          let p = raw.bindMemory(to: UInt16.self)
          return offsets.map { CoreMLEngine.halfToFloat(p[$0]) }
        case .double:
          let p = raw.bindMemory(to: Double.self)
          return offsets.map { Float(p[$0]) }
        default:
          throw BundleError("output of type \(type), expected float32 or float16")
        }
      }
    }

    /// Element offsets of every index of `shape` in row-major order.
    static func offsets(shape: [Int], strides: [Int]) -> [Int] {
      var result = [0]
      for (dim, stride) in zip(shape, strides) {
        result = result.flatMap { base in (0..<dim).map { base + $0 * stride } }
      }
      return result
    }

    /// IEEE 754 binary16 bits -> Float (no Float16 type: it is missing on macOS x86-64).
    static func halfToFloat(_ bits: UInt16) -> Float {
      let sign: UInt32 = UInt32(bits & 0x8000) << 16
      let exponent = Int(bits >> 10) & 0x1f
      let mantissa = UInt32(bits & 0x3ff)
      if exponent == 0 {
        // zero or subnormal: mantissa * 2^-24
        let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -magnitude : magnitude
      }
      if exponent == 0x1f { return Float(bitPattern: sign | 0x7f80_0000 | (mantissa << 13)) }
      return Float(bitPattern: sign | UInt32(exponent - 15 + 127) << 23 | (mantissa << 13))
    }

    /// The last `last` values of a float32 [1,1,vocab] output (contiguous along its last axis).
    static func floats(_ array: MLMultiArray, last: Int) throws -> [Float] {
      guard array.dataType == .float32 else { throw BundleError("logits are \(array.dataType), expected float32") }
      guard array.count >= last else { throw BundleError("logits hold \(array.count) values, vocab is \(last)") }
      return array.withUnsafeMutableBytes { raw, strides in
        let p = raw.bindMemory(to: Float.self)
        let step = strides.last ?? 1
        let base = (array.count - last) * step
        return (0..<last).map { p[base + $0 * step] }
      }
    }
  }
#endif

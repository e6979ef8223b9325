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
  /// per package one MLModel per function (`MLModelConfiguration.functionName`), one MLState shared by both
  /// functions, the "io" layout's delta-net state kept host-side and passed in and out, packages chained by
  /// `hidden`/`hidden_out` when the model is split.
  public final class CoreMLEngine: InferenceEngine {
    public let planner: EnginePlanner
    public let computeUnits: ComputeUnitsChoice
    /// How the functions' state is shared: "one MLState for both functions", or copied if Core ML refuses that
    /// (undocumented either way; scripts/verify_coreml_on_mac.py makes the same choice and reports it).
    public private(set) var stateSharing = "one MLState for both functions"

    final class Package {
      let file: String
      let models: [String: MLModel]  // "prefill", "decode"
      let stateNames: [String]
      var shared: MLState
      var perFunction: [String: MLState]
      var lastFunction: String?

      init(file: String, models: [String: MLModel], stateNames: [String]) {
        self.file = file
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
          let config = MLModelConfiguration()
          config.computeUnits = computeUnits.mlValue
          config.functionName = function
          models[function] = try MLModel(contentsOf: compiled, configuration: config)
        }
        packages[spec.file] = Package(
          file: spec.file, models: models, stateNames: planner.coreMLStates(package: spec.file).map(\.name))
      }
      let engine = CoreMLEngine(planner: planner, computeUnits: computeUnits)
      engine.packages = packages
      engine.predictCall = { [unowned engine] file, function, inputs in
        guard let package = engine.packages[file], let model = package.models[function] else {
          throw BundleError("package \(file) has no function \(function)")
        }
        return try engine.predict(model, inputs, package, function: function)
      }
      return engine
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
        let buffers = planner.hostStateBuffers(package: file)
        if step.startPosition == 0 || host[file] == nil {
          // The graph zeroes these at position 0 too; fresh zeros keep the host copy honest (as runner.py does).
          var zeros: [String: MLMultiArray] = [:]
          for buffer in buffers {
            zeros[buffer.name] = try MLMultiArray(shape: buffer.shape.map { NSNumber(value: $0) }, dataType: .float32)
          }
          host[file] = zeros
        }
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
        for name in call.outputs {
          guard let value = out.featureValue(for: name)?.multiArrayValue else {
            throw BundleError("package \(file) function \(call.method): no output '\(name)'")
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

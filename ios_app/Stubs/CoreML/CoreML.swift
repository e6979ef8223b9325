// Linux-only stand-in for Apple's Core ML framework: exactly the declarations QwenMobileEngines and the app call,
// each with the SDK page it mirrors (https://developer.apple.com/documentation/coreml/...). Nothing here runs a model:
// every entry point that would compute throws `StubUnavailable`, so code paths reached in Linux tests fail loudly.
// The package only builds this target on Linux (Package.swift); on Apple platforms `import CoreML` is the real SDK.
#if os(Linux)
  import Foundation

  public struct StubUnavailable: Error, CustomStringConvertible {
    public let api: String
    public var description: String { "\(api) is an Apple SDK call; this Linux stub only type-checks it" }
  }

  /// MLComputeUnits — .../coreml/mlcomputeunits
  public enum MLComputeUnits: Int {
    case cpuOnly = 0
    case cpuAndGPU = 1
    case all = 2
    case cpuAndNeuralEngine = 3
  }

  /// MLMultiArrayDataType — .../coreml/mlmultiarraydatatype
  public enum MLMultiArrayDataType: Int {
    case double = 65600
    case float32 = 65568
    case float16 = 65552
    case int32 = 131104
  }

  /// MLModelConfiguration — .../coreml/mlmodelconfiguration
  open class MLModelConfiguration {
    public init() {}
    /// .../coreml/mlmodelconfiguration/computeunits
    open var computeUnits: MLComputeUnits = .all
    /// .../coreml/mlmodelconfiguration/functionname (iOS 18, macOS 15): which function of a multifunction model
    open var functionName: String?
  }

  /// MLMultiArray — .../coreml/mlmultiarray
  open class MLMultiArray {
    public let shape: [NSNumber]
    public let strides: [NSNumber]
    public let dataType: MLMultiArrayDataType
    private var storage: [UInt8]

    /// .../coreml/mlmultiarray/init(shape:datatype:)
    public init(shape: [NSNumber], dataType: MLMultiArrayDataType) throws {
      self.shape = shape
      self.dataType = dataType
      var strides: [Int] = []
      var running = 1
      for dim in shape.reversed() {
        strides.insert(running, at: 0)
        running *= dim.intValue
      }
      self.strides = strides.map { NSNumber(value: $0) }
      let width: Int
      switch dataType {
      case .double: width = 8
      case .float32, .int32: width = 4
      case .float16: width = 2
      }
      storage = [UInt8](repeating: 0, count: running * width)
    }

    /// .../coreml/mlmultiarray/count
    open var count: Int { shape.reduce(1) { $0 * $1.intValue } }

    /// .../coreml/mlmultiarray/withunsafemutablebytes(_:) (iOS 15.4)
    open func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer, [Int]) throws -> R) rethrows -> R {
      let s = strides.map(\.intValue)
      return try storage.withUnsafeMutableBytes { try body($0, s) }
    }

    /// .../coreml/mlmultiarray/withunsafebytes(_:) (iOS 15.4)
    open func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
      try storage.withUnsafeBytes { try body($0) }
    }
  }

  /// MLFeatureValue — .../coreml/mlfeaturevalue
  open class MLFeatureValue {
    public let multiArrayValue: MLMultiArray?
    /// .../coreml/mlfeaturevalue/init(multiarray:)
    public init(multiArray: MLMultiArray) { multiArrayValue = multiArray }
  }

  /// MLFeatureProvider — .../coreml/mlfeatureprovider
  public protocol MLFeatureProvider {
    var featureNames: Set<String> { get }
    func featureValue(for featureName: String) -> MLFeatureValue?
  }

  /// MLDictionaryFeatureProvider — .../coreml/mldictionaryfeatureprovider
  open class MLDictionaryFeatureProvider: MLFeatureProvider {
    public let dictionary: [String: MLFeatureValue]
    /// .../coreml/mldictionaryfeatureprovider/init(dictionary:) (values: MLFeatureValue or MLMultiArray, ...)
    public init(dictionary: [String: Any]) throws {
      var d: [String: MLFeatureValue] = [:]
      for (k, v) in dictionary {
        if let f = v as? MLFeatureValue {
          d[k] = f
        } else if let a = v as? MLMultiArray {
          d[k] = MLFeatureValue(multiArray: a)
        } else {
          throw StubUnavailable(api: "MLDictionaryFeatureProvider value of type \(type(of: v))")
        }
      }
      self.dictionary = d
    }
    public var featureNames: Set<String> { Set(dictionary.keys) }
    public func featureValue(for featureName: String) -> MLFeatureValue? { dictionary[featureName] }
  }

  /// MLPredictionOptions — .../coreml/mlpredictionoptions
  open class MLPredictionOptions {
    public init() {}
  }

  /// MLState (iOS 18) — .../coreml/mlstate
  open class MLState {
    init() {}
    /// .../coreml/mlstate/withmultiarray(for:_:) : the state's storage, for copying between states
    open func withMultiArray<R>(for stateName: String, _ body: (MLMultiArray) throws -> R) rethrows -> R {
      fatalError("MLState.withMultiArray(for:) is an Apple SDK call; this Linux stub only type-checks it")
    }
  }

  /// MLModel — .../coreml/mlmodel
  open class MLModel {
    /// .../coreml/mlmodel/init(contentsof:configuration:) (a compiled .mlmodelc)
    public init(contentsOf url: URL, configuration: MLModelConfiguration) throws {
      throw StubUnavailable(api: "MLModel(contentsOf:configuration:)")
    }

    /// .../coreml/mlmodel/compilemodel(at:)-6442s (async, iOS 16): .mlpackage -> compiled .mlmodelc
    public class func compileModel(at modelURL: URL) async throws -> URL {
      throw StubUnavailable(api: "MLModel.compileModel(at:)")
    }

    /// .../coreml/mlmodel/makestate() (iOS 18)
    open func makeState() -> MLState { MLState() }

    /// .../coreml/mlmodel/prediction(from:options:) : a stateless prediction (the vision package, `embed`)
    open func prediction(from input: MLFeatureProvider, options: MLPredictionOptions) throws -> MLFeatureProvider {
      throw StubUnavailable(api: "MLModel.prediction(from:options:)")
    }

    /// .../coreml/mlmodel/prediction(from:using:options:) (iOS 18): a stateful prediction
    open func prediction(from input: MLFeatureProvider, using state: MLState, options: MLPredictionOptions) throws
      -> MLFeatureProvider
    {
      throw StubUnavailable(api: "MLModel.prediction(from:using:options:)")
    }
  }
#endif

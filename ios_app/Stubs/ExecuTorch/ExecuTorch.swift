// Linux-only stand-in for ExecuTorch's Swift API (the `ExecuTorch` product of github.com/pytorch/executorch's
// swiftpm-1.x branches; sources under extension/apple/ExecuTorch/Exported/): exactly what ExecuTorchEngine calls,
// each declaration naming the header or Swift file it mirrors. Nothing runs: execution throws.
#if os(Linux)
  import Foundation

  public struct StubUnavailable: Error, CustomStringConvertible {
    public let api: String
    public var description: String { "\(api) is an ExecuTorch iOS call; this Linux stub only type-checks it" }
  }

  /// ExecuTorchModule.h, ExecuTorchModuleLoadMode (NS_SWIFT_NAME(ModuleLoadMode))
  public enum ModuleLoadMode: Int {
    case file = 0
    case mmap
    case mmapUseMlock
    case mmapUseMlockIgnoreErrors
  }

  /// ExecuTorchTensor.h / ExecuTorch+Tensor.swift: element types a Tensor<T> can hold
  public protocol Scalar {}
  extension Float: Scalar {}
  extension Int64: Scalar {}
  extension Int32: Scalar {}
  extension UInt8: Scalar {}

  /// ExecuTorch+Value.swift: what execute() accepts
  public protocol ValueConvertible {}

  /// ExecuTorch+Tensor.swift, `Tensor<T: Scalar>`
  public final class Tensor<T: Scalar>: ValueConvertible {
    public let shape: [Int]
    private let values: [T]
    /// ExecuTorch+Tensor.swift: init(_ scalars: [T], shape: [Int]) (copies the scalars)
    public init(_ scalars: [T], shape: [Int]) {
      self.values = scalars
      self.shape = shape
    }
    /// ExecuTorch+Tensor.swift: func scalars() -> [T]
    public func scalars() -> [T] { values }
  }

  /// ExecuTorchValue.h / ExecuTorch+Value.swift (NS_SWIFT_NAME(Value))
  public final class Value {
    private init() {}
    /// ExecuTorch+Value.swift: func tensor<T: Scalar>() -> Tensor<T>? (nil when not a tensor of T)
    public func tensor<T: Scalar>() -> Tensor<T>? { nil }
  }

  /// ExecuTorchModule.h (NS_SWIFT_NAME(Module)) and ExecuTorch+Module.swift
  public final class Module {
    public let filePath: String
    /// ExecuTorchModule.h: initWithFilePath:loadMode:
    public init(filePath: String, loadMode: ModuleLoadMode) { self.filePath = filePath }

    /// ExecuTorchModule.h: loadMethod:error: (NS_SWIFT_NAME(load(_:)))
    public func load(_ methodName: String) throws { throw StubUnavailable(api: "Module.load(_:)") }

    /// ExecuTorchModule.h: methodNames: (NS_SWIFT_NAME(methodNames()))
    public func methodNames() throws -> Set<String> { throw StubUnavailable(api: "Module.methodNames()") }

    /// ExecuTorch+Module.swift: func execute(_ method: String, _ inputs: [ValueConvertible]) throws -> [Value]
    public func execute(_ method: String, _ inputs: [ValueConvertible]) throws -> [Value] {
      throw StubUnavailable(api: "Module.execute(_:_:)")
    }
  }
#endif

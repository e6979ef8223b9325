import Foundation

/// A bundle, vector or setting that cannot be used, with a one-line message naming the file and field.
public struct BundleError: Error, CustomStringConvertible, Equatable {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

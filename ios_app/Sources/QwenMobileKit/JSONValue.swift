import Foundation

/// Typed reads from a JSONSerialization tree, each failure naming the source file and the field path
/// (e.g. `manifest.json: field 'state/max_seq_len': expected an integer`).
public struct JSONNode {
  public let value: Any?
  public let path: String
  public let source: String

  public init(_ value: Any?, path: String = "", source: String) {
    self.value = value
    self.path = path
    self.source = source
  }

  public static func parse(_ data: Data, source: String) throws -> JSONNode {
    do {
      return JSONNode(try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]), source: source)
    } catch {
      throw BundleError("\(source): not valid JSON (\(error.localizedDescription))")
    }
  }

  public static func load(_ url: URL) throws -> JSONNode {
    guard let data = FileManager.default.contents(atPath: url.path) else {
      throw BundleError("\(url.path): cannot read the file")
    }
    return try parse(quotingNonFinite(data), source: url.lastPathComponent)
  }

  /// Python's json writes -inf logits as the bare word -Infinity (and NaN, Infinity), which JSONSerialization
  /// rejects; outside string literals they become the strings "-Infinity", ... that double() reads back.
  static func quotingNonFinite(_ data: Data) -> Data {
    let bytes = [UInt8](data)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = 0
    var inString = false
    let words: [[UInt8]] = [Array("-Infinity".utf8), Array("Infinity".utf8), Array("NaN".utf8)]
    while i < bytes.count {
      let b = bytes[i]
      if inString {
        out.append(b)
        if b == UInt8(ascii: "\\"), i + 1 < bytes.count {
          out.append(bytes[i + 1])
          i += 2
          continue
        }
        if b == UInt8(ascii: "\"") { inString = false }
        i += 1
        continue
      }
      if b == UInt8(ascii: "\"") {
        inString = true
        out.append(b)
        i += 1
        continue
      }
      if let word = words.first(where: { w in i + w.count <= bytes.count && Array(bytes[i..<(i + w.count)]) == w }) {
        out.append(UInt8(ascii: "\""))
        out.append(contentsOf: word)
        out.append(UInt8(ascii: "\""))
        i += word.count
        continue
      }
      out.append(b)
      i += 1
    }
    return Data(out)
  }

  func fail(_ what: String) -> BundleError {
    BundleError("\(source): field '\(path.isEmpty ? "(top level)" : path)': \(what)")
  }

  public subscript(key: String) -> JSONNode {
    let child = (value as? [String: Any])?[key]
    return JSONNode(child, path: path.isEmpty ? key : "\(path)/\(key)", source: source)
  }

  public var exists: Bool { value != nil && !(value is NSNull) }

  public func object() throws -> [String: Any] {
    guard let v = value as? [String: Any] else { throw fail(value == nil ? "missing" : "expected an object") }
    return v
  }

  public func keys() throws -> [String] { try object().keys.sorted() }

  public func array() throws -> [JSONNode] {
    guard let v = value as? [Any] else { throw fail(value == nil ? "missing" : "expected an array") }
    return v.enumerated().map { JSONNode($1, path: "\(path)/\($0)", source: source) }
  }

  public func string() throws -> String {
    guard let v = value as? String else { throw fail(value == nil ? "missing" : "expected a string") }
    return v
  }

  public func optionalString() throws -> String? { exists ? try string() : nil }

  public func bool() throws -> Bool {
    // NSNumber bridges 0/1 to Bool; only a JSON true/false is accepted.
    if let n = value as? NSNumber, isBoolean(n) { return n.boolValue }
    if let b = value as? Bool { return b }
    throw fail(value == nil ? "missing" : "expected true or false")
  }

  public func int() throws -> Int {
    if let n = value as? NSNumber, !isBoolean(n) {
      let d = n.doubleValue
      if d == d.rounded(), abs(d) < 9.0e15 { return n.intValue }
    }
    throw fail(value == nil ? "missing" : "expected an integer")
  }

  public func optionalInt() throws -> Int? { exists ? try int() : nil }

  public func double() throws -> Double {
    if let n = value as? NSNumber, !isBoolean(n) { return n.doubleValue }
    switch value as? String {
    case "-Infinity": return -.infinity
    case "Infinity": return .infinity
    case "NaN": return .nan
    default: break
    }
    throw fail(value == nil ? "missing" : "expected a number")
  }

  public func ints() throws -> [Int] { try array().map { try $0.int() } }

  public func doubles() throws -> [Double] { try array().map { try $0.double() } }

  private func isBoolean(_ n: NSNumber) -> Bool {
    #if canImport(Darwin)
      return CFGetTypeID(n) == CFBooleanGetTypeID()
    #else
      return String(cString: n.objCType) == "c" && (value is Bool)
    #endif
  }
}

/// Deterministic JSON writing (sorted keys), written under a temporary name and renamed, so a reader never sees a
/// half-written file.
public enum JSONWriter {
  public static func data(_ object: Any) throws -> Data {
    try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
  }

  public static func writeAtomically(_ object: Any, to url: URL) throws {
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
    try data(object).write(to: tmp)
    if FileManager.default.fileExists(atPath: url.path) { try FileManager.default.removeItem(at: url) }
    try FileManager.default.moveItem(at: tmp, to: url)
  }
}

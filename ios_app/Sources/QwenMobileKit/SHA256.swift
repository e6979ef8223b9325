import Foundation

/// SHA-256 (FIPS 180-4) in plain Swift: CryptoKit exists only on Apple platforms, and the manifest check must run
/// (and be tested) on Linux too. Streaming, so a multi-gigabyte `.pte` is hashed in 1 MiB reads.
public struct SHA256 {
  private static let k: [UInt32] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
    0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
    0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
    0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
    0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
    0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
    0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
  ]

  private var h: [UInt32] = [
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19,
  ]
  private var pending: [UInt8] = []
  private var totalBytes: UInt64 = 0
  private var w = [UInt32](repeating: 0, count: 64)

  public init() {}

  public mutating func update<D: Sequence>(_ bytes: D) where D.Element == UInt8 {
    let array = Array(bytes)
    array.withUnsafeBytes { update($0) }
  }

  public mutating func update(_ data: Data) {
    data.withUnsafeBytes { update($0) }
  }

  /// Whole 64-byte blocks are compressed straight from `raw`; only a partial block is copied aside.
  public mutating func update(_ raw: UnsafeRawBufferPointer) {
    var offset = 0
    if !pending.isEmpty {
      let take = min(64 - pending.count, raw.count)
      pending.append(contentsOf: raw[0..<take])
      offset = take
      guard pending.count == 64 else { return }
      pending.withUnsafeBytes { compress($0, at: 0) }
      pending.removeAll(keepingCapacity: true)
      totalBytes &+= 64
    }
    while raw.count - offset >= 64 {
      compress(raw, at: offset)
      offset += 64
      totalBytes &+= 64
    }
    pending.append(contentsOf: raw[offset...])
  }

  /// The digest; the hasher must not be updated afterwards.
  public mutating func finalize() -> [UInt8] {
    let bitLength = (totalBytes &+ UInt64(pending.count)) &* 8
    var tail = pending
    tail.append(0x80)
    while tail.count % 64 != 56 { tail.append(0) }
    for shift in stride(from: 56, through: 0, by: -8) {
      tail.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift)))
    }
    tail.withUnsafeBytes { raw in
      for offset in stride(from: 0, to: raw.count, by: 64) { compress(raw, at: offset) }
    }
    pending = []
    var out: [UInt8] = []
    out.reserveCapacity(32)
    for word in h {
      for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt32(shift))) }
    }
    return out
  }

  private mutating func compress(_ block: UnsafeRawBufferPointer, at base: Int) {
    for i in 0..<16 {
      let j = base + 4 * i
      w[i] = UInt32(block[j]) << 24 | UInt32(block[j + 1]) << 16 | UInt32(block[j + 2]) << 8 | UInt32(block[j + 3])
    }
    for i in 16..<64 {
      let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
      let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
      w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
    }
    var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7]
    for i in 0..<64 {
      let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
      let ch = (e & f) ^ (~e & g)
      let t1 = hh &+ s1 &+ ch &+ SHA256.k[i] &+ w[i]
      let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
      let maj = (a & b) ^ (a & c) ^ (b & c)
      let t2 = s0 &+ maj
      hh = g
      g = f
      f = e
      e = d &+ t1
      d = c
      c = b
      b = a
      a = t1 &+ t2
    }
    h[0] &+= a
    h[1] &+= b
    h[2] &+= c
    h[3] &+= d
    h[4] &+= e
    h[5] &+= f
    h[6] &+= g
    h[7] &+= hh
  }

  @inline(__always) private func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

  /// Lower-case hex digest of `bytes`.
  public static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
    var hasher = SHA256()
    hasher.update(bytes)
    return hexString(hasher.finalize())
  }

  /// Lower-case hex digest of a file, read in chunks; also returns its size in bytes.
  public static func hexFile(at url: URL, chunkSize: Int = 1 << 20) throws -> (digest: String, bytes: UInt64) {
    guard let handle = FileHandle(forReadingAtPath: url.path) else {
      throw BundleError("\(url.path): cannot open for reading")
    }
    defer { try? handle.close() }
    var hasher = SHA256()
    var size: UInt64 = 0
    while true {
      let chunk = handle.readData(ofLength: chunkSize)
      if chunk.isEmpty { break }
      size += UInt64(chunk.count)
      hasher.update(chunk)
    }
    return (hexString(hasher.finalize()), size)
  }

  static func hexString(_ digest: [UInt8]) -> String {
    let digits = Array("0123456789abcdef")
    var s = ""
    s.reserveCapacity(digest.count * 2)
    for byte in digest {
      s.append(digits[Int(byte >> 4)])
      s.append(digits[Int(byte & 0xf)])
    }
    return s
  }
}

#if canImport(SwiftUI)
  import QwenMobileAppLogic
  import QwenMobileKit
  import SwiftUI

  /// Chat with streaming text and tok/s per reply; thinking on/off; the state is kept between turns.
  struct ChatView: View {
    @EnvironmentObject var state: AppState
    @State private var chat: Live<ChatController>?
    @State private var input = ""
    @State private var thinking = false

    var body: some View {
      NavigationStack {
        VStack {
          if let chat {
            ScrollView {
              ForEach(chat.model.messages) { message in
                VStack(alignment: message.role == "user" ? .trailing : .leading) {
                  Text(message.text).textSelection(.enabled)
                  if let stats = message.stats { Text(stats).font(.caption2).foregroundStyle(.secondary) }
                }
                .frame(maxWidth: .infinity, alignment: message.role == "user" ? .trailing : .leading)
                .padding(4)
              }
            }
            if let error = chat.model.lastError { Text(error).font(.caption).foregroundStyle(.red) }
            HStack {
              TextField("Message", text: $input).textFieldStyle(.roundedBorder)
              Button(chat.model.isGenerating ? "Stop" : "Send") {
                if chat.model.isGenerating {
                  chat.model.stop()
                } else {
                  let text = input
                  input = ""
                  Task.detached { try? chat.model.send(text) }
                }
              }
            }
          } else {
            Text("Open a bundle on the Bundles tab.").foregroundStyle(.secondary)
          }
        }
        .padding()
        .navigationTitle("Chat")
        .toolbar {
          Toggle("Thinking", isOn: $thinking)
          Button("New chat") { chat?.model.reset() }
        }
        .onChange(of: thinking) { _, value in chat?.model.thinking = value }
        .onChange(of: state.bundle?.url) { _, _ in makeChat() }
        .onAppear { makeChat() }
      }
    }

    func makeChat() {
      guard let engine = state.engine, let bundle = state.bundle, let file = bundle.manifest.tokenizerFile,
        let tokenizer = try? BPETokenizer(url: bundle.file(file))
      else { return }
      thinking = ChatTemplate.thinkingDefault(
        size: bundle.manifest.modelSize, manifest: bundle.manifest.thinkingDefault)
      chat = Live(ChatController(engine: engine, tokenizer: tokenizer, thinking: thinking)) { model, notify in
        model.onChange = notify
      }
    }
  }
#endif

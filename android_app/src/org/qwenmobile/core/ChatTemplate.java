package org.qwenmobile.core;

import java.util.List;

/**
 * Qwen3.5's ChatML, rendered turn by turn exactly as runtime/chat.py does, so a chat only ever prefills its new turn.
 *
 * <p>Turns are {@code <|im_start|>role\ncontent<|im_end|>\n}; the generation prompt is {@code <|im_start|>assistant\n}
 * then {@code <think>\n} (thinking on) or the empty block {@code <think>\n\n</think>\n\n} (thinking off). Earlier
 * assistant turns keep their think blocks: the model state already holds them as generated.
 */
public final class ChatTemplate {
    public static final String IM_START = "<|im_start|>";
    public static final String IM_END = "<|im_end|>";
    public static final String THINK = "<think>";
    public static final String END_THINK = "</think>";

    public final boolean thinking;

    public ChatTemplate(boolean thinking) {
        this.thinking = thinking;
    }

    public static final class Message {
        public final String role;
        public final String content;

        public Message(String role, String content) {
            this.role = role;
            this.content = content;
        }
    }

    public String system(String text) {
        return IM_START + "system\n" + text + IM_END + "\n";
    }

    /** A user turn and the assistant's generation prompt. */
    public String user(String text) {
        return userTurn(text) + generationPrompt();
    }

    static String userTurn(String text) {
        return IM_START + "user\n" + text + IM_END + "\n";
    }

    public String generationPrompt() {
        return IM_START + "assistant\n" + (thinking ? THINK + "\n" : THINK + "\n\n" + END_THINK + "\n\n");
    }

    /** Text that ends an assistant turn before the next user turn (the model's own <|im_end|> already fed or not). */
    public static String closeAssistant(boolean endedWithImEnd) {
        return endedWithImEnd ? "\n" : IM_END + "\n";
    }

    /** The text a chat session feeds for a whole conversation (what the shared vectors check). */
    public String render(List<Message> messages, boolean addGenerationPrompt) {
        StringBuilder b = new StringBuilder();
        for (Message m : messages) {
            if ("system".equals(m.role)) b.append(system(m.content));
            else if ("user".equals(m.role)) b.append(userTurn(m.content));
            else if ("assistant".equals(m.role)) b.append(generationPrompt()).append(m.content).append(IM_END)
                    .append(closeAssistant(true));
            else throw new IllegalArgumentException("role '" + m.role + "': the template has system, user and assistant");
        }
        if (addGenerationPrompt) b.append(generationPrompt());
        return b.toString();
    }
}

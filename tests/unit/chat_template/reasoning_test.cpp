// Reasoning split from the answer: whole and streamed in every split, a
// thought the prompt opened, one never closed, and text that only looks like
// a tag.
#include <gtest/gtest.h>

#include <string>

#include "tandem/model/reasoning.h"

namespace tandem::model {
namespace {

ReasoningStream::Split whole(const std::string& text, bool in_thought) {
  ReasoningStream s(ReasoningFormat::kThinkTags, in_thought);
  ReasoningStream::Split a = s.push(text), b = s.finish();
  return {a.reasoning + b.reasoning, a.content + b.content};
}

// Fed in two pieces at every cut, the output adds up to the whole split.
void expect_split_invariant(const std::string& text, bool in_thought) {
  const auto want = whole(text, in_thought);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    ReasoningStream s(ReasoningFormat::kThinkTags, in_thought);
    std::string reasoning, content;
    for (const auto& part : {s.push(text.substr(0, cut)), s.push(text.substr(cut)), s.finish()}) {
      reasoning += part.reasoning;
      content += part.content;
    }
    EXPECT_EQ(reasoning, want.reasoning) << "cut " << cut;
    EXPECT_EQ(content, want.content) << "cut " << cut;
  }
}

TEST(Reasoning, ThoughtThenAnswer) {
  const std::string text = "<think>\nThe user greets me.\n</think>\n\nHello!";
  const auto r = whole(text, false);
  EXPECT_EQ(r.reasoning, "\nThe user greets me.\n");
  EXPECT_EQ(r.content, "Hello!");
  expect_split_invariant(text, false);
  expect_split_invariant("  \n<think>a < b, c </thin k></think>x</think>", false);
}

TEST(Reasoning, PromptOpenedTheThought) {
  EXPECT_TRUE(prompt_opens_thought("<|Assistant|><think>\n"));
  EXPECT_FALSE(prompt_opens_thought("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(prompt_opens_thought("no tags"));
  EXPECT_FALSE(prompt_opens_thought("<|User|>what does <think> do?<|Assistant|>"));  // quoted, not the prompt's end
  const auto r = whole("Let me see.</think>\n\nFour.", true);
  EXPECT_EQ(r.reasoning, "Let me see.");
  EXPECT_EQ(r.content, "Four.");
  expect_split_invariant("Let me see.</think>\n\nFour.", true);
}

TEST(Reasoning, UnclosedThoughtIsAllReasoning) {
  const auto r = whole("<think>still thinking when max_tokens came", false);
  EXPECT_EQ(r.reasoning, "still thinking when max_tokens came");
  EXPECT_EQ(r.content, "");
  const auto partial = whole("<think>cut inside the tag </thi", false);
  EXPECT_EQ(partial.reasoning, "cut inside the tag </thi");
}

TEST(Reasoning, NoThoughtIsAllContent) {
  for (const std::string text : {"Just an answer.", "  <thinking> is not the tag", "<thi", "", "a <think>late</think>"}) {
    const auto r = whole(text, false);
    EXPECT_EQ(r.reasoning, "") << text;
    EXPECT_EQ(r.content, text);
    expect_split_invariant(text, false);
  }
  ReasoningStream none(ReasoningFormat::kNone, true);
  EXPECT_EQ(none.push("<think>x</think>").content, "<think>x</think>");
}

TEST(Reasoning, Names) {
  EXPECT_EQ(*reasoning_format("deepseek_r1"), ReasoningFormat::kThinkTags);
  EXPECT_EQ(*reasoning_format("qwen3"), ReasoningFormat::kThinkTags);
  EXPECT_EQ(*reasoning_format("none"), ReasoningFormat::kNone);
  auto bad = reasoning_format("granite");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("granite"), std::string::npos);
}

}  // namespace
}  // namespace tandem::model

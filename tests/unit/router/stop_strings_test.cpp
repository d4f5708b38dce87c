// Stop strings over streamed text: held back while they may still match,
// cut right before a match, and not applied to text before min_tokens.
#include "stop_strings.h"

#include <gtest/gtest.h>

namespace tandem::router {
namespace {

TEST(StopStrings, HoldsBackCutsAndPassesTextBeforeMinTokens) {
  StopStringFilter f({"END", ""});
  bool hit = false;
  EXPECT_EQ(f.push("abcE", hit), "ab");  // "cE" could start "END"
  EXPECT_FALSE(hit);
  EXPECT_EQ(f.push("x", hit), "c");  // the last two bytes could still start it
  EXPECT_EQ(f.pass("END "), "ExEND ");  // before min_tokens: released, not matched
  EXPECT_EQ(f.push("yEN", hit), "y");
  EXPECT_EQ(f.push("Dz", hit), "");
  EXPECT_TRUE(hit);
  StopStringFilter none({});
  EXPECT_EQ(none.push("anything", hit), "anything");
  EXPECT_FALSE(hit);
}

}  // namespace
}  // namespace tandem::router

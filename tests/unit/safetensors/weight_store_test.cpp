#include <nlohmann/json.hpp>

#include "st_test_util.h"

namespace tandem::model {
namespace {

using namespace st_test;

class SafetensorsDir : public TempDirTest {
 protected:
  void write_index(const nlohmann::json& weight_map) {
    nlohmann::json j = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    write_bytes(path("model.safetensors.index.json"), j.dump());
  }
  nlohmann::json read_index() { return nlohmann::json::parse(read_bytes(path("model.safetensors.index.json"))); }
};

// 5 tensors of 64 bytes plus one of 256: with a 150-byte limit this gives
// [t0 t1] [t2 t3] [big] [t4].
std::vector<TensorToWrite> shard_tensors() {
  std::vector<TensorToWrite> v;
  for (int i = 0; i < 4; ++i) v.push_back(make_tensor("layers." + std::to_string(i) + ".w", DType::kF32, {4, 4}, i));
  v.push_back(make_tensor("big", DType::kF64, {32}, 9));
  v.push_back(make_tensor("layers.4.w", DType::kBF16, {2, 16}, 4));
  return v;
}

TEST_F(SafetensorsDir, SingleFileWhenUnderTheLimit) {
  const auto ts = shard_tensors();
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), ts).is_ok());
  EXPECT_TRUE(fs::exists(path("model.safetensors")));
  EXPECT_FALSE(fs::exists(path("model.safetensors.index.json")));
  auto store = WeightStore::open_dir(dir_.string());
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  EXPECT_EQ((*store)->dir(), dir_.string());
  EXPECT_EQ((*store)->names().size(), ts.size());
  const TensorInfo* t = (*store)->find("big");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(fs::path(t->file).filename(), "model.safetensors");
}

TEST_F(SafetensorsDir, ShardedRoundTrip) {
  const auto ts = shard_tensors();
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), ts, 150).is_ok());
  EXPECT_FALSE(fs::exists(path("model.safetensors")));
  const auto index = read_index();
  EXPECT_EQ(index["metadata"]["total_size"], 5 * 64 + 256);
  const std::map<std::string, std::string> want_shard = {
      {"layers.0.w", "model-00001-of-00004.safetensors"}, {"layers.1.w", "model-00001-of-00004.safetensors"},
      {"layers.2.w", "model-00002-of-00004.safetensors"}, {"layers.3.w", "model-00002-of-00004.safetensors"},
      {"big", "model-00003-of-00004.safetensors"},        {"layers.4.w", "model-00004-of-00004.safetensors"}};
  EXPECT_EQ(index["weight_map"].get<decltype(want_shard)>(), want_shard);

  auto store = WeightStore::open_dir(dir_.string());
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  std::vector<std::string> names;
  for (const auto& t : ts) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ((*store)->names(), names);
  for (const auto& want : ts) {
    SCOPED_TRACE(want.name);
    const TensorInfo* got = (*store)->find(want.name);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(fs::path(got->file).filename(), want_shard.at(want.name));
    EXPECT_EQ(got->dtype, want.dtype);
    EXPECT_EQ(got->shape, want.shape);
    ASSERT_EQ(got->nbytes, want.data.size());
    EXPECT_EQ(std::memcmp(got->data, want.data.data(), got->nbytes), 0);
  }
  EXPECT_EQ((*store)->find("layers.0"), nullptr);
}

TEST_F(SafetensorsDir, RewritingSwitchesLayoutCleanly) {
  const auto ts = shard_tensors();
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), ts, 150).is_ok());
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), ts).is_ok());
  EXPECT_FALSE(fs::exists(path("model.safetensors.index.json")));  // would shadow the new single file
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), ts, 150).is_ok());
  EXPECT_FALSE(fs::exists(path("model.safetensors")));
  auto store = WeightStore::open_dir(dir_.string());
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
}

TEST_F(SafetensorsDir, CheckpointWriterValidatesEveryTensor) {
  auto ts = shard_tensors();
  ts[3].data.pop_back();
  Status st = write_checkpoint_weights(dir_.string(), ts, 150);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(st.message(), "layers.3.w")) << st.message();
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(SafetensorsDir, EmptyDirectoryIsNotFound) {
  auto store = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(store.status().code(), StatusCode::kNotFound);
  for (const char* s : {"model.safetensors", "model.safetensors.index.json"})
    EXPECT_TRUE(contains(store.status().message(), s)) << store.status().message();
  EXPECT_TRUE(contains(store.status().message(), dir_.string())) << store.status().message();
}

TEST_F(SafetensorsDir, IndexNamingAMissingTensor) {
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), shard_tensors(), 150).is_ok());
  auto wm = read_index()["weight_map"];
  wm["ghost.weight"] = "model-00002-of-00004.safetensors";
  write_index(wm);
  auto store = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(store.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(contains(store.status().message(), "ghost.weight")) << store.status().message();
  EXPECT_TRUE(contains(store.status().message(), "model-00002-of-00004.safetensors")) << store.status().message();
}

TEST_F(SafetensorsDir, IndexNamingAMissingShard) {
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), shard_tensors(), 150).is_ok());
  fs::remove(path("model-00003-of-00004.safetensors"));
  auto store = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(store.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(contains(store.status().message(), "model-00003-of-00004.safetensors")) << store.status().message();
  EXPECT_TRUE(contains(store.status().message(), "big")) << store.status().message();
}

TEST_F(SafetensorsDir, IndexShardNamesMustStayInTheDirectory) {
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), shard_tensors(), 150).is_ok());
  for (const char* shard : {"../model-00001-of-00004.safetensors", "sub/x.safetensors", "/etc/passwd", "..", ""}) {
    SCOPED_TRACE(shard);
    auto wm = read_index()["weight_map"];
    wm["layers.0.w"] = shard;
    write_index(wm);
    auto store = WeightStore::open_dir(dir_.string());
    EXPECT_EQ(store.status().code(), StatusCode::kInvalidArgument) << store.status().to_string();
    EXPECT_TRUE(contains(store.status().message(), "layers.0.w")) << store.status().message();
  }
}

TEST_F(SafetensorsDir, TensorInTwoShards) {
  ASSERT_TRUE(write_safetensors(path("s1.safetensors"), {make_tensor("w", DType::kF32, {2})}).is_ok());
  ASSERT_TRUE(write_safetensors(path("s2.safetensors"),
                                {make_tensor("w", DType::kF32, {2}), make_tensor("v", DType::kF32, {2})})
                  .is_ok());
  write_index({{"w", "s1.safetensors"}, {"v", "s2.safetensors"}});
  auto store = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss);
  for (const char* s : {"'w'", "s1.safetensors", "s2.safetensors"})
    EXPECT_TRUE(contains(store.status().message(), s)) << store.status().message();
}

TEST_F(SafetensorsDir, BrokenIndexJson) {
  write_bytes(path("model.safetensors.index.json"), "{\"weight_map\": {");
  auto bad = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(contains(bad.status().message(), "model.safetensors.index.json")) << bad.status().message();

  write_bytes(path("model.safetensors.index.json"), R"({"metadata":{}})");
  auto no_map = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(no_map.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(contains(no_map.status().message(), "weight_map")) << no_map.status().message();

  write_bytes(path("model.safetensors.index.json"),
              R"({"weight_map":{"a":"s.safetensors","a":"t.safetensors"}})");
  auto dup = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(dup.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(contains(dup.status().message(), "duplicate key 'a'")) << dup.status().message();
}

TEST_F(SafetensorsDir, CorruptShardIsNamed) {
  ASSERT_TRUE(write_checkpoint_weights(dir_.string(), shard_tensors(), 150).is_ok());
  const std::string p = path("model-00002-of-00004.safetensors");
  fs::resize_file(p, fs::file_size(p) - 1);
  auto store = WeightStore::open_dir(dir_.string());
  EXPECT_EQ(store.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(contains(store.status().message(), "model-00002-of-00004.safetensors")) << store.status().message();
}

}  // namespace
}  // namespace tandem::model

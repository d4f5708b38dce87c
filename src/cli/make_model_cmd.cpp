#include "commands.h"
namespace tandem::cli {
void register_make_model(CLI::App& app) {}
}

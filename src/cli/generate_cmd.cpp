#include "commands.h"
namespace tandem::cli {
void register_generate(CLI::App& app) {}
}

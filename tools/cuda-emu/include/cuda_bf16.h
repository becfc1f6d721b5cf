// cuda-emu: everything this header would declare is in emu.h (included first).
#pragma once
#include "emu.h"

// sonicmoe/sonicmoe.h — everything a user of the torch-free C++ API includes.
#pragma once

#include "sonicmoe/moe.h"
#include "sonicmoe/reference.h"
#include "sonicmoe/routing.h"
#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

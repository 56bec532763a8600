from dawntrain.cli import main

raise SystemExit(main())
